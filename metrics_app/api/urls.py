"""Routes of the analytics and conversations API, mounted under /api/ by mlops_site.urls."""

from django.urls import path

from metrics_app.api import analytics, conversations

urlpatterns = [
    path("analytics/summary", analytics.SummaryView.as_view(), name="analytics-summary"),
    path("analytics/funnel", analytics.FunnelView.as_view(), name="analytics-funnel"),
    path("analytics/timeseries", analytics.TimeseriesView.as_view(), name="analytics-timeseries"),
    path("analytics/breakdown/<str:dimension>", analytics.BreakdownView.as_view(), name="analytics-breakdown"),
    path("analytics/peak-hours", analytics.PeakHoursView.as_view(), name="analytics-peak-hours"),
    path("conversations/", conversations.ConversationListView.as_view(), name="conversations"),
    path("conversations/outcome", conversations.ConversationOutcomeView.as_view(), name="conversations-outcome"),
    path("conversations/<int:pk>", conversations.ConversationDetailView.as_view(), name="conversation-detail"),
]
