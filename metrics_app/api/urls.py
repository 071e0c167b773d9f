"""Routes of the analytics and conversations API, mounted under /api/ by mlops_site.urls."""

from django.urls import path

from metrics_app.api import analytics, conversations, experiments, opening_hours, predictions

urlpatterns = [
    path("analytics/summary", analytics.SummaryView.as_view(), name="analytics-summary"),
    path("analytics/funnel", analytics.FunnelView.as_view(), name="analytics-funnel"),
    path("analytics/timeseries", analytics.TimeseriesView.as_view(), name="analytics-timeseries"),
    path("analytics/breakdown/<str:dimension>", analytics.BreakdownView.as_view(), name="analytics-breakdown"),
    path("analytics/peak-hours", analytics.PeakHoursView.as_view(), name="analytics-peak-hours"),
    path("analytics/costs", analytics.CostOptionsView.as_view(), name="analytics-costs"),
    path("analytics/opening-hours", opening_hours.OpeningHoursView.as_view(), name="analytics-opening-hours"),
    path("analytics/likely-bookings", predictions.LikelyBookingsView.as_view(), name="analytics-likely-bookings"),
    path("analytics/compare", experiments.CompareView.as_view(), name="analytics-compare"),
    path("experiments/", experiments.ExperimentListView.as_view(), name="experiments"),
    path("experiments/<int:pk>", experiments.ExperimentDetailView.as_view(), name="experiment-detail"),
    path("experiments/<int:pk>/stop", experiments.ExperimentStopView.as_view(), name="experiment-stop"),
    path("experiments/<int:pk>/results", experiments.ExperimentResultsView.as_view(), name="experiment-results"),
    path("conversations/", conversations.ConversationListView.as_view(), name="conversations"),
    path("conversations/outcome", conversations.ConversationOutcomeView.as_view(), name="conversations-outcome"),
    path("conversations/<int:pk>", conversations.ConversationDetailView.as_view(), name="conversation-detail"),
]
