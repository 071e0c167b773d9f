"""The knowledge base as the chat app reads it: its version and summary, and a search over its chunks."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from documents_app.pipeline.stages import KB_PATH
from documents_app.search.embeddings import MethodUnavailable
from documents_app.search.knowledge_base import KnowledgeBase, KnowledgeBaseMissing, current_knowledge_base
from metrics_app import access
from metrics_app.errors import documented_errors
from metrics_app.rules import BUSINESS_ID_MAX_LENGTH, business_id_problem

MAX_RESULTS = 20


class KnowledgeBaseNotBuilt(exceptions.APIException):
    status_code = status.HTTP_404_NOT_FOUND
    default_detail = "No knowledge base has been built yet; run the document pipeline"


class SearchUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The knowledge base's embedding method is not installed, or cannot be loaded, on this server"


class ScopeQuery(serializers.Serializer):
    business_id = serializers.CharField(required=False, max_length=BUSINESS_ID_MAX_LENGTH)

    def validate_business_id(self, value: str) -> str:
        problem = business_id_problem(value)
        if problem is not None:
            raise serializers.ValidationError(f"a business id {problem}")
        return value


class SearchQuery(ScopeQuery):
    q = serializers.CharField(max_length=500, trim_whitespace=True)
    k = serializers.IntegerField(required=False, default=3, min_value=1, max_value=MAX_RESULTS)


class KnowledgeBaseSummarySerializer(serializers.Serializer):
    version = serializers.CharField(
        help_text="With a business (`business_id`, or a business key): that business's own knowledge-base version, "
                  "which the chat app sends as `kb_version`; it changes only with the business's own documents, the "
                  "embedding method or the parameters. Without one: the build's version (as `build_version`)."
    )
    build_version = serializers.CharField(
        help_text="The whole build's version, over every business's documents: it changes when any business's do. "
                  "A pipeline run records it; do not send it as `kb_version`."
    )
    built_at = serializers.DateTimeField()
    embedding = serializers.DictField(help_text="The embedding method (and model) the knowledge base was built with.")
    params = serializers.DictField(help_text="The pipeline parameters of the build (params.yaml).")
    business_id = serializers.CharField(required=False)
    documents = serializers.ListField(child=serializers.CharField(), required=False)
    chunks = serializers.IntegerField(required=False)
    topics = serializers.DictField(child=serializers.IntegerField(), required=False)
    businesses = serializers.DictField(
        required=False,
        help_text="Per business, for agency keys and staff: each business's own `version`, documents, chunks and "
                  "topics.",
    )


class KnowledgeBaseChunkSerializer(serializers.Serializer):
    chunk_id = serializers.CharField()
    score = serializers.FloatField(
        help_text="Relevance: cosine similarity for minilm-onnx, hybrid and minilm (hybrid orders by the fused "
                  "ranks), the BM25 score for bm25; higher is better. Hits below the method's min_score are left out."
    )
    kb_version = serializers.CharField(
        help_text="The business's knowledge-base version the hit comes from (send it as kb_version)."
    )
    text = serializers.CharField()
    source = serializers.CharField(help_text="The document, as a path inside the business's folder.")  # type: ignore[assignment]  # a declared field: DRF's metaclass takes it off the class
    section = serializers.CharField()
    position = serializers.IntegerField(help_text="Order of the chunk in its document, from 0.")
    topic = serializers.CharField()
    also_in = serializers.ListField(child=serializers.DictField(), help_text="Near-duplicates merged into it.")


class KnowledgeBaseSearchSerializer(serializers.Serializer):
    version = serializers.CharField(help_text="The business's own knowledge-base version, as each hit's kb_version.")
    build_version = serializers.CharField(help_text="The whole build's version (every business's documents).")
    business_id = serializers.CharField()
    query = serializers.CharField()
    k = serializers.IntegerField()
    results = KnowledgeBaseChunkSerializer(many=True, help_text="Best first; empty when nothing answers the query.")


ERRORS = documented_errors(
    400, 401, 403, 404, 405, 429, 503,
    overrides={
        400: "Invalid query; `errors` names each bad parameter (business_id is required without a key).",
        404: "No knowledge base has been built yet.",
        503: "The knowledge base's embedding method is not installed, or cannot be loaded, on this server.",
    },
)


def business_in_scope(request: Request, requested: str | None) -> tuple[str | None, set[str] | None]:
    """The business the caller asked for (None: all it may see), and the ids it may see (None: every one).

    Keys and staff go through metrics_app.access, the one rule for every door:
    a business key reads only its own business, an agency key and staff who
    see every business read any, limited staff their granted ones. Without a
    key (development only) the caller names the business with ?business_id=.
    """
    user = request.user
    key = getattr(user, "key", None)
    if key is not None and not key.can_read:
        raise exceptions.PermissionDenied("This API key may not read the knowledge base (needs the read scope)")
    if key is not None or getattr(user, "is_authenticated", False):
        visible = access.visible_business_ids(user)
        if visible == set():
            raise exceptions.PermissionDenied("This user may not read any business's knowledge base")
        if requested is not None and visible is not None and requested not in visible:
            raise exceptions.PermissionDenied(f"You may not read business {requested!r}")
        if requested is None and visible is not None and len(visible) == 1 and key is not None:
            (requested,) = visible  # a business key implies its business
        return requested, visible
    if not settings.MLOPS_ALLOW_ANONYMOUS_CHAT:
        raise exceptions.NotAuthenticated("An API key is required")
    if not requested:
        raise exceptions.ValidationError({"business_id": ["required when no API key is sent"]})
    return requested, {requested}


def _knowledge_base() -> KnowledgeBase:
    try:
        return current_knowledge_base(settings.DOCUMENTS_PIPELINE_ROOT / KB_PATH)
    except KnowledgeBaseMissing as exc:
        raise KnowledgeBaseNotBuilt(f"No knowledge base is available: {exc}") from None
    except MethodUnavailable:
        raise SearchUnavailable() from None


class KnowledgeBaseView(APIView):
    """GET /api/knowledge-base/: the business's current version (the chat app's `kb_version`) and what it holds."""

    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="knowledge_base",
        tags=["knowledge base"],
        parameters=[ScopeQuery],
        responses={200: KnowledgeBaseSummarySerializer, **ERRORS},
        description="The caller's business's current knowledge-base version (send it as `kb_version`) and what "
        "it holds (every business, each with its own version, for agency keys and staff without `business_id`).",
    )
    def get(self, request: Request) -> Response:
        query = ScopeQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        business_id, visible = business_in_scope(request, query.validated_data.get("business_id"))
        return Response(_knowledge_base().summary(business_id, visible))


class KnowledgeBaseSearchView(APIView):
    """GET /api/knowledge-base/search?q=...&k=3: the best chunks of one business, with scores and sources."""

    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="knowledge_base_search",
        tags=["knowledge base"],
        parameters=[SearchQuery],
        responses={200: KnowledgeBaseSearchSerializer, **ERRORS},
        description="The `k` chunks of the caller's business that best answer `q`, best first, with their "
        "scores and sources. Chunks that match nothing are left out, so fewer than `k` may come back.",
    )
    def get(self, request: Request) -> Response:
        query = SearchQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        business_id, _ = business_in_scope(request, data.get("business_id"))
        if business_id is None:
            raise exceptions.ValidationError({"business_id": ["name the business to search"]})
        kb = _knowledge_base()
        try:
            results = kb.search(business_id, data["q"], data["k"])
        except MethodUnavailable:
            raise SearchUnavailable() from None
        return Response(
            {
                "version": kb.business_version(business_id),
                "build_version": kb.version,
                "business_id": business_id,
                "query": data["q"],
                "k": data["k"],
                "results": results,
            }
        )


@extend_schema(exclude=True)
class KnowledgeBaseSearchSlashView(KnowledgeBaseSearchView):
    """The same search at .../search/, left out of the schema so that it documents one operation."""
