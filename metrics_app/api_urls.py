"""Routes of the analytics and conversations API, mounted under /api/ by mlops_site.urls."""

from django.urls import path

from metrics_app import api

urlpatterns = [
    path("analytics/summary", api.SummaryView.as_view(), name="analytics-summary"),
    path("analytics/funnel", api.FunnelView.as_view(), name="analytics-funnel"),
    path("analytics/timeseries", api.TimeseriesView.as_view(), name="analytics-timeseries"),
    path("analytics/breakdown/<str:dimension>", api.BreakdownView.as_view(), name="analytics-breakdown"),
    path("analytics/peak-hours", api.PeakHoursView.as_view(), name="analytics-peak-hours"),
    path("conversations/", api.ConversationListView.as_view(), name="conversations"),
    path("conversations/outcome", api.ConversationOutcomeView.as_view(), name="conversations-outcome"),
    path("conversations/<int:pk>", api.ConversationDetailView.as_view(), name="conversation-detail"),
]
