"""Routes under /api/knowledge-base/."""

from django.urls import path

from documents_app import api

urlpatterns = [
    path("", api.KnowledgeBaseView.as_view(), name="knowledge-base"),
    path("search", api.KnowledgeBaseSearchView.as_view(), name="knowledge-base-search"),
    path("search/", api.KnowledgeBaseSearchSlashView.as_view()),
]
