"""Admin for businesses (with their opening hours) and their API keys.

A new key is shown once, on the page after it is made.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from metrics_app import access
from metrics_app.access import visible_business_ids, visible_rows
from metrics_app.console.actions import CheckedSelectionAdmin
from metrics_app.console.hours import OpeningExceptionInline, OpeningHoursInline
from metrics_app.erasure import services as erasure
from metrics_app.keys import services as key_services
from metrics_app.models import ApiKey, Business
from metrics_app.rules import business_id_problem

# Businesses one action erases at most: each one rebuilds the knowledge base when it has documents.
MAX_BUSINESSES_ERASED_AT_ONCE = 10


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("name", "prefix", "can_ingest", "can_read", "expires_at", "revoked_at", "last_used_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Keys are made on the API key page, which shows the new key once.
        return False


@admin.register(Business)
class BusinessAdmin(CheckedSelectionAdmin):
    list_display = ("id", "name", "time_zone", "active_keys", "created_at")
    search_fields = ("id", "name")
    readonly_fields = ("created_at",)
    inlines = [OpeningHoursInline, OpeningExceptionInline, ApiKeyInline]
    actions = ["erase_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Business]:
        now = timezone.now()
        usable = Q(api_keys__revoked_at__isnull=True) & (
            Q(api_keys__expires_at__isnull=True) | Q(api_keys__expires_at__gt=now)
        )
        businesses = visible_rows(request.user, super().get_queryset(request), "id")
        return businesses.annotate(_active_keys=Count("api_keys", filter=usable))

    @admin.display(description="active keys", ordering="_active_keys")
    def active_keys(self, obj: Business) -> int:
        return obj._active_keys  # type: ignore[attr-defined]  # annotated by get_queryset

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A new business is visible only to staff who see every business; adding one blind would also tell
        # limited staff which ids exist, and let them pick another tenant's name and time zone in advance.
        return super().has_add_permission(request) and access.sees_every_business(request.user)

    def get_readonly_fields(self, request: HttpRequest, obj: Business | None = None) -> tuple[str, ...]:
        # The id is what the chat app sends: it cannot change once events refer to it.
        return (*self.readonly_fields, "id") if obj else self.readonly_fields

    @admin.action(description="Erase the selected businesses everywhere", permissions=["erase"])
    def erase_selected(self, request: HttpRequest, queryset: QuerySet[Business]) -> TemplateResponse | None:
        """After a confirmation page naming each business and what it holds: each erased, with its audit record."""
        chosen = list(queryset.order_by("id")[:MAX_BUSINESSES_ERASED_AT_ONCE])
        if request.POST.get("confirmed") != "yes":
            listed = [(business, [(kind, n) for kind, n in erasure.business_holdings(business.pk).items() if n])
                      for business in chosen]
            context = {**self.admin_site.each_context(request), "title": "Erase businesses everywhere?",
                       "opts": self.opts, "businesses": listed,
                       "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME), "action": "erase_selected"}
            return TemplateResponse(request, "admin/metrics_app/business/erase_confirmation.html", context)
        reason = request.POST.get("reason", "")[:300]
        for business in chosen:
            try:
                done = erasure.erase_business(request.user, business.pk, reason=reason)
            except (erasure.ErasureRefused, erasure.ErasureIncomplete) as failed:
                self.message_user(request, f"{business.pk}: {failed}", messages.ERROR)
                continue
            self.message_user(request, f"Erased {business.pk} everywhere: {done.counts['events']} event(s), "
                              f"{done.counts['conversations']} conversation(s).", messages.SUCCESS)
        return None

    def has_erase_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("metrics_app.add_erasurerecord")


class ApiKeyForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ("business", "name", "can_ingest", "can_read", "expires_at", "rate_limit_per_minute")

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        business = data.get("business")
        if not business and data.get("can_ingest"):
            self.add_error("can_ingest", "An agency key (no business) may only read.")
        if business is not None and not self.instance.pk and business_id_problem(business.pk) is not None:
            self.add_error("business", f"A business id {business_id_problem(business.pk)}: it gets no new keys.")
        if not data.get("can_ingest") and not data.get("can_read"):
            self.add_error(None, "Choose at least one scope.")
        expires = data.get("expires_at")
        if expires and expires <= timezone.now() and not self.instance.pk:
            self.add_error("expires_at", "The expiry must be in the future.")
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(CheckedSelectionAdmin):
    form = ApiKeyForm
    list_display = ("name", "prefix", "business", "scope_list", "state", "expires_at", "last_used_at", "created_at")
    list_filter = ("can_ingest", "can_read", ("revoked_at", admin.EmptyFieldListFilter))
    list_select_related = ("business",)
    search_fields = ("name", "prefix", "business__id", "business__name")
    readonly_fields = ("prefix", "created_at", "created_by", "last_used_at", "revoked_at")
    actions = ["revoke_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        # Staff limited to some businesses see those businesses' keys, and no agency key.
        return visible_rows(request.user, super().get_queryset(request))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        visible = visible_business_ids(request.user) if db_field.name == "business" else None
        if visible is not None:
            # A limited staff member may not make an agency key: it would read every business.
            kwargs["queryset"] = Business.objects.filter(pk__in=visible)
            kwargs["required"] = True
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    @admin.display(description="state")
    def state(self, obj: ApiKey) -> str:
        if obj.revoked_at:
            return "revoked"
        if obj.expires_at and obj.expires_at <= timezone.now():
            return "expired"
        return "active"

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # Scopes and owner are part of what was handed out: make a new key instead.
        return (*self.readonly_fields, "business", "can_ingest", "can_read")

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = key_services.create_api_key(
            business=form.cleaned_data.get("business"),
            name=form.cleaned_data["name"],
            can_ingest=form.cleaned_data.get("can_ingest", False),
            can_read=form.cleaned_data.get("can_read", False),
            expires_at=form.cleaned_data.get("expires_at"),
            rate_limit_per_minute=form.cleaned_data.get("rate_limit_per_minute"),
            created_by=request.user,
        )
        obj.pk = key.pk
        obj.prefix = key.prefix
        request._new_raw_api_key = raw  # type: ignore[attr-defined]  # shown once by response_add, never stored

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        raw = getattr(request, "_new_raw_api_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "key": ApiKey.objects.select_related("business").get(pk=obj.pk),
            "raw_key": raw,
            "opts": self.model._meta,
        }
        response = TemplateResponse(request, "admin/metrics_app/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            key_services.revoke_api_key(key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # Revoke instead: the row keeps the record of who used which key.
        return False
