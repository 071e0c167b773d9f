"""The event store: businesses, one row per AI reply, and API keys."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
import uuid
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from metrics_app.rules import (
    BUSINESS_ID_CHARACTERS,
    BUSINESS_ID_MAX_LENGTH,
    MAX_COST_USD,
    MAX_ID_LENGTH,
    MAX_LABEL_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_RESPONSE_TIME_MS,
    MAX_RESPONSE_TYPE_LENGTH,
    MAX_TOKENS,
    CostBasis,
    is_failed_reply,
    validate_business_id,
)

__all__ = ["CostBasis"]  # defined in rules, where the unpriced bases are; models is its usual address

# A conversation has ended once this long passes without an event (each business sets its own).
DEFAULT_CONVERSATION_IDLE_MINUTES = 30
MAX_CONVERSATION_IDLE_MINUTES = 1440


class SentimentSource(models.TextChoices):
    CLIENT = "client", "the client's own score"
    VADER = "vader", "VADER, from the message the service scored and dropped"


def validate_time_zone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{value!r} is not an IANA time zone such as Europe/London") from None


class Business(models.Model):
    """A business whose receptionist sends events. Its id is the chat app's `business_id`."""

    id = models.CharField(
        primary_key=True,
        max_length=BUSINESS_ID_MAX_LENGTH,
        validators=[validate_business_id],
        verbose_name="business id",
        help_text=f"The chat app's business_id: {BUSINESS_ID_CHARACTERS}.",
    )
    name = models.CharField(max_length=200, blank=True, help_text="Display name; the id when empty.")
    time_zone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="Default time zone of this business's analytics (IANA name).",
    )
    conversation_idle_minutes = models.PositiveSmallIntegerField(
        default=DEFAULT_CONVERSATION_IDLE_MINUTES,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_CONVERSATION_IDLE_MINUTES)],
        verbose_name="conversation ends after (minutes idle)",
        help_text="A conversation has ended once this many minutes pass without an event (1 to 1440).",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "mlops_business"
        verbose_name_plural = "businesses"
        constraints = [
            models.CheckConstraint(
                condition=Q(conversation_idle_minutes__gte=1,
                            conversation_idle_minutes__lte=MAX_CONVERSATION_IDLE_MINUTES),
                name="business_conversation_idle_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name or self.id

    @property
    def conversation_idle(self) -> datetime.timedelta:
        return datetime.timedelta(minutes=self.conversation_idle_minutes)



def validate_quarter_hour(value: datetime.time) -> None:
    if value.minute % 15 or value.second or value.microsecond:
        raise ValidationError(f"{value:%H:%M} is not on a quarter hour: use minutes 00, 15, 30 or 45")


_QUARTER_HOUR_HELP = (
    "Local time of the business, on a quarter hour (minutes 00, 15, 30, 45): UTC offsets are multiples of 15 "
    "minutes, so every 15-minute analytics bucket is then wholly open or wholly closed."
)
_CLOSES_HELP = _QUARTER_HOUR_HELP + " 00:00 closes at midnight, at the end of the day."


def _quarter_hour(field: str) -> Q:
    return Q(**{f"{field}__minute__in": [0, 15, 30, 45], f"{field}__second": 0})


MIDNIGHT = datetime.time(0, 0)


def closes_after(opens: datetime.time, closes: datetime.time) -> bool:
    """Whether [opens, closes) is an interval of one day: 00:00 as a closing time is the midnight ending it."""
    return closes > opens or closes == MIDNIGHT


def _closes_after_opens() -> Q:
    # closes_after in SQL, for the database to refuse what the admin refuses.
    return Q(closes__gt=models.F("opens")) | Q(closes=MIDNIGHT)


class OpeningHours(models.Model):
    """One interval of a business's week in its own time zone, [opens, closes) on an ISO weekday.

    A day may have several (a lunch break is two); a weekday without one is
    closed. An OpeningException for a local date replaces the week's
    intervals of that date. metrics_app/analytics/hours.py reads them.
    """

    class Weekday(models.IntegerChoices):
        MONDAY = 1
        TUESDAY = 2
        WEDNESDAY = 3
        THURSDAY = 4
        FRIDAY = 5
        SATURDAY = 6
        SUNDAY = 7

    business = models.ForeignKey(Business, on_delete=models.CASCADE, related_name="opening_hours")
    weekday = models.PositiveSmallIntegerField(choices=Weekday.choices)
    opens = models.TimeField(validators=[validate_quarter_hour], help_text=_QUARTER_HOUR_HELP)
    closes = models.TimeField(validators=[validate_quarter_hour], help_text=_CLOSES_HELP)

    class Meta:
        db_table = "mlops_opening_hours"
        verbose_name = "opening hours"
        verbose_name_plural = "opening hours"
        constraints = [
            models.CheckConstraint(condition=Q(weekday__gte=1, weekday__lte=7), name="opening_hours_weekday_range"),
            models.CheckConstraint(condition=_closes_after_opens(), name="opening_hours_closes_after_opens"),
            models.CheckConstraint(condition=_quarter_hour("opens") & _quarter_hour("closes"),
                                   name="opening_hours_on_quarter_hours"),
        ]
        indexes = [
            # The analytics read a business's whole week at once.
            models.Index(fields=["business", "weekday"], name="opening_hours_business_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_weekday_display()} {self.opens:%H:%M}-{self.closes:%H:%M}"

    def clean(self) -> None:
        super().clean()
        if self.opens is not None and self.closes is not None and not closes_after(self.opens, self.closes):
            raise ValidationError({"closes": "Closes must be after opens (00:00 for midnight)."})


class OpeningException(models.Model):
    """A local date whose hours differ from the week's: closed all day, or its own intervals.

    Rows without times close the date; rows with times are that date's
    intervals instead of the week's. A date with both is closed.
    """

    business = models.ForeignKey(Business, on_delete=models.CASCADE, related_name="opening_exceptions")
    date = models.DateField(help_text="Local date of the business.")
    opens = models.TimeField(null=True, blank=True, validators=[validate_quarter_hour],
                             help_text="Empty (with closes) for closed all day. " + _QUARTER_HOUR_HELP)
    closes = models.TimeField(null=True, blank=True, validators=[validate_quarter_hour], help_text=_CLOSES_HELP)
    note = models.CharField(max_length=200, blank=True, help_text='Why, e.g. "Christmas".')

    class Meta:
        db_table = "mlops_opening_exception"
        constraints = [
            models.CheckConstraint(
                condition=Q(opens__isnull=True, closes__isnull=True)
                | (Q(opens__isnull=False, closes__isnull=False) & _closes_after_opens()),
                name="opening_exception_closed_or_interval",
            ),
            models.CheckConstraint(
                condition=(Q(opens__isnull=True) | _quarter_hour("opens"))
                & (Q(closes__isnull=True) | _quarter_hour("closes")),
                name="opening_exception_on_quarter_hours",
            ),
        ]
        indexes = [
            # The analytics read a business's exceptions within a period's dates.
            models.Index(fields=["business", "date"], name="opening_exception_date_idx"),
        ]

    def __str__(self) -> str:
        hours = "closed" if self.opens is None else f"{self.opens:%H:%M}-{self.closes:%H:%M}"
        return f"{self.date:%Y-%m-%d} {hours}" + (f" ({self.note})" if self.note else "")

    @property
    def closed_all_day(self) -> bool:
        return self.opens is None

    def clean(self) -> None:
        super().clean()
        if (self.opens is None) != (self.closes is None):
            raise ValidationError("Give both opens and closes, or neither for closed all day.")
        if self.opens is not None and self.closes is not None and not closes_after(self.opens, self.closes):
            raise ValidationError({"closes": "Closes must be after opens (00:00 for midnight)."})


class AIMetric(models.Model):
    """One AI reply, as the chat app reported it.

    The table keeps the seed's name and columns (`ai_metrics`) so that SQL
    written against the seed still runs.
    """

    id = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField(default=uuid.uuid4, help_text="Client-made id; a repeat is a duplicate.")
    # No database-level foreign key: PostgreSQL checks one with a trigger per
    # inserted row, which measured at nearly half of a 500-event batch insert.
    # Ingest creates the Business row before it stores its events
    # (services.ensure_businesses), and PROTECT still guards deletes in Django.
    # No index of its own either: every read by business also filters or orders by time, and
    # ai_metrics_business_ts_idx starts with business_id.
    business = models.ForeignKey(
        Business, on_delete=models.PROTECT, db_column="business_id", related_name="events", db_constraint=False,
        db_index=False,
    )
    conversation_id = models.CharField(max_length=MAX_ID_LENGTH, null=True, blank=True)
    session_id = models.CharField(max_length=MAX_ID_LENGTH, null=True, blank=True)

    # Rows adopted from the seed's table may lack these; the API requires them.
    response_time_ms = models.IntegerField(null=True)
    success_rate = models.DecimalField(max_digits=5, decimal_places=4, default=1)
    tokens_used = models.IntegerField(null=True)
    input_tokens = models.IntegerField(null=True, blank=True)
    output_tokens = models.IntegerField(null=True, blank=True)
    # Subsets of the totals above, as the OpenTelemetry GenAI conventions define them:
    # input_tokens is the whole prompt (fresh, read from the cache and written to it),
    # output_tokens the whole output (visible and reasoning).
    cache_read_input_tokens = models.IntegerField(null=True, blank=True, help_text="Input tokens read from the cache.")
    cache_write_input_tokens = models.IntegerField(
        null=True, blank=True, help_text="Input tokens written to the cache."
    )
    reasoning_output_tokens = models.IntegerField(null=True, blank=True, help_text="Output tokens spent reasoning.")
    api_cost_usd = models.DecimalField(max_digits=10, decimal_places=6, null=True, blank=True)
    model_name = models.CharField(max_length=MAX_LABEL_LENGTH, null=True, blank=True)

    intent_detected = models.CharField(max_length=MAX_LABEL_LENGTH, null=True, blank=True)
    appointment_requested = models.BooleanField(default=False)
    appointment_booked = models.BooleanField(default=False)
    human_handoff_requested = models.BooleanField(default=False)

    user_message_length = models.IntegerField(null=True, blank=True)
    # The customer's message itself is never stored: only its score (the client's own, or VADER's
    # compound score of the text the client sent for scoring and the ingest dropped).
    user_sentiment = models.DecimalField(
        max_digits=5, decimal_places=4, null=True, blank=True,
        help_text="Sentiment of the customer's message, -1 (very negative) to +1 (very positive).",
    )
    sentiment_source = models.CharField(
        max_length=8, choices=SentimentSource.choices, null=True, blank=True,
        help_text="Who scored user_sentiment: the client, or the service (VADER) from the message it dropped.",
    )
    ai_response_length = models.IntegerField(null=True, blank=True)
    response_type = models.CharField(max_length=MAX_RESPONSE_TYPE_LENGTH, null=True, blank=True)
    prompt_version = models.CharField(max_length=MAX_LABEL_LENGTH, null=True, blank=True)
    kb_version = models.CharField(max_length=MAX_LABEL_LENGTH, null=True, blank=True)

    timestamp = models.DateTimeField(help_text="When the reply happened (the receive time when the client sent none).")
    created_at = models.DateTimeField(default=timezone.now, help_text="When the service stored the event.")

    # The cost that analytics use: the server's price when the model has one in
    # force at `timestamp`, else the client's `api_cost_usd` (see cost_basis).
    # Ten decimals hold tokens x a per-million price of four decimals exactly.
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)
    cost_basis = models.CharField(max_length=16, choices=CostBasis.choices, default=CostBasis.UNPRICED_NONE)
    # What the cache changed in cost_usd: the cached tokens at the input price minus their own prices
    # (negative when cache writes cost more than they saved). None when unpriced or nothing was cached.
    cache_savings_usd = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)

    class Meta:
        db_table = "ai_metrics"
        verbose_name = "AI event"
        constraints = [
            models.CheckConstraint(
                condition=Q(response_time_ms__gte=0, response_time_ms__lte=MAX_RESPONSE_TIME_MS)
                | Q(response_time_ms__isnull=True),
                name="ai_metrics_response_time_range",
            ),
            models.CheckConstraint(
                condition=Q(success_rate__gte=0, success_rate__lte=1), name="ai_metrics_success_rate_range"
            ),
            models.CheckConstraint(
                condition=Q(tokens_used__gte=0, tokens_used__lte=MAX_TOKENS) | Q(tokens_used__isnull=True),
                name="ai_metrics_tokens_range",
            ),
            models.CheckConstraint(
                condition=Q(input_tokens__gte=0, input_tokens__lte=MAX_TOKENS) | Q(input_tokens__isnull=True),
                name="ai_metrics_input_tokens_range",
            ),
            models.CheckConstraint(
                condition=Q(output_tokens__gte=0, output_tokens__lte=MAX_TOKENS) | Q(output_tokens__isnull=True),
                name="ai_metrics_output_tokens_range",
            ),
            models.CheckConstraint(
                condition=Q(api_cost_usd__gte=0, api_cost_usd__lte=MAX_COST_USD) | Q(api_cost_usd__isnull=True),
                name="ai_metrics_cost_range",
            ),
            *(
                models.CheckConstraint(
                    condition=Q(**{f"{name}__gte": 0, f"{name}__lte": MAX_TOKENS}) | Q(**{f"{name}__isnull": True}),
                    name=f"ai_metrics_{name}_range",
                )
                for name in ("cache_read_input_tokens", "cache_write_input_tokens", "reasoning_output_tokens")
            ),
            models.CheckConstraint(
                condition=Q(user_message_length__gte=0, user_message_length__lte=MAX_MESSAGE_LENGTH)
                | Q(user_message_length__isnull=True),
                name="ai_metrics_user_length_range",
            ),
            models.CheckConstraint(
                condition=Q(ai_response_length__gte=0, ai_response_length__lte=MAX_MESSAGE_LENGTH)
                | Q(ai_response_length__isnull=True),
                name="ai_metrics_ai_length_range",
            ),
            models.CheckConstraint(
                condition=Q(user_sentiment__gte=-1, user_sentiment__lte=1) | Q(user_sentiment__isnull=True),
                name="ai_metrics_user_sentiment_range",
            ),
        ]
        indexes = [
            # Analytics for one business over a period (summary, time series,
            # breakdowns): WHERE business_id = %s AND timestamp BETWEEN ...
            models.Index(fields=["business", "timestamp"], name="ai_metrics_business_ts_idx"),
            # Analytics over all businesses for a period, and the admin's date filter.
            models.Index(fields=["timestamp"], name="ai_metrics_ts_idx"),
            # A conversation's events, in order (conversation views, outcomes recorded later).
            models.Index(fields=["business", "conversation_id", "timestamp"], name="ai_metrics_conversation_idx"),
            # reprice_events: the events of one model from a date on.
            models.Index(fields=["model_name", "timestamp"], name="ai_metrics_model_ts_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.business_id} {self.event_id} at {self.timestamp:%Y-%m-%d %H:%M:%S}"

    @property
    def failed(self) -> bool:
        return is_failed_reply(self.success_rate, self.response_type)


class ApiKeyScope(models.TextChoices):
    INGEST = "ingest", "ingest (write this business's events)"
    READ = "read", "read (analytics, conversations, knowledge base)"


KEY_PREFIX_MARK = "mlk"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


class ApiKey(models.Model):
    """A per-business API key, stored as a SHA-256 hash behind a visible prefix.

    The full key is `mlk_<prefix>_<secret>`; it is shown once, when it is made.
    A key without a business is an agency key: it may only read, all businesses.
    """

    business = models.ForeignKey(
        Business, on_delete=models.CASCADE, null=True, blank=True, related_name="api_keys",
        help_text="Empty for an agency read key that reads every business.",
    )
    name = models.CharField(max_length=100, help_text="What the key is for, e.g. 'chat app production'.")
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    hashed_key = models.CharField(max_length=64, editable=False)
    can_ingest = models.BooleanField(default=True, verbose_name="scope: ingest")
    can_read = models.BooleanField(default=False, verbose_name="scope: read")
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Requests per minute across all workers; empty for the service default.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, editable=False
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        db_table = "mlops_api_key"
        constraints = [
            models.CheckConstraint(
                condition=Q(business__isnull=False) | Q(can_ingest=False), name="api_key_agency_keys_only_read"
            ),
            models.CheckConstraint(condition=Q(can_ingest=True) | Q(can_read=True), name="api_key_has_a_scope"),
        ]

    def __str__(self) -> str:
        owner = self.business_id or "all businesses"
        return f"{self.name} ({self.prefix}…, {owner})"

    @property
    def scopes(self) -> list[str]:
        granted = ((ApiKeyScope.INGEST, self.can_ingest), (ApiKeyScope.READ, self.can_read))
        return [scope for scope, allowed in granted if allowed]

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())

    def matches(self, raw_key: str) -> bool:
        return hmac.compare_digest(self.hashed_key, hash_key(raw_key))

    @staticmethod
    def generate() -> tuple[str, str, str]:
        """A new (raw key, prefix, hash). The raw key is never stored."""
        prefix = secrets.token_hex(6)
        raw = f"{KEY_PREFIX_MARK}_{prefix}_{secrets.token_urlsafe(32)}"
        return raw, prefix, hash_key(raw)


class RateLimitSlot(models.Model):
    """One request admitted for a key in a minute: the minute's n-th admitted request holds slot n.

    A request claims the lowest free slot by inserting it; a slot number is
    unique per key and minute, so two requests never hold one, and slots stop
    at the key's limit. Requests of one key insert different rows, so none
    waits on another's row lock.
    """

    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    minute = models.BigIntegerField(help_text="Minutes since the epoch.")
    slot = models.PositiveIntegerField()

    class Meta:
        db_table = "mlops_rate_limit_slot"
        constraints = [models.UniqueConstraint(fields=["key", "minute", "slot"], name="rate_limit_slot_uniq")]

    def __str__(self) -> str:
        return f"{self.key_id}@{self.minute}: #{self.slot}"


class ModelPrice(models.Model):
    """A published price of a model, in USD per million tokens, in force from `valid_from`.

    An event is priced by the row whose pattern matches its model name and whose
    `valid_from` is the latest one not after the event's time; when several
    patterns match, the most specific (longest) wins.
    """

    model_pattern = models.CharField(
        max_length=100,
        help_text="Model name, or a glob such as gemini-1.5-flash* (case-insensitive).",
    )
    input_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=4, verbose_name="input USD / 1M tokens")
    output_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=4, verbose_name="output USD / 1M tokens")
    cached_input_usd_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=4, null=True, blank=True, verbose_name="cached input USD / 1M tokens",
        help_text="Input tokens read from the prompt cache; empty: priced as input.",
    )
    cache_write_input_usd_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=4, null=True, blank=True, verbose_name="cache write USD / 1M tokens",
        help_text="Input tokens written to the prompt cache, where the provider prices them; empty: priced as input.",
    )
    valid_from = models.DateTimeField(help_text="The price applies to events at or after this moment.")
    source_url = models.URLField(max_length=500, help_text="Where the price is published.")
    source_as_of = models.DateField(help_text="The date the source showed this price.")
    notes = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "mlops_model_price"
        constraints = [
            models.UniqueConstraint(fields=["model_pattern", "valid_from"], name="model_price_pattern_from_uniq"),
            models.CheckConstraint(
                condition=Q(input_usd_per_mtok__gte=0, output_usd_per_mtok__gte=0)
                & (Q(cached_input_usd_per_mtok__gte=0) | Q(cached_input_usd_per_mtok__isnull=True))
                & (Q(cache_write_input_usd_per_mtok__gte=0) | Q(cache_write_input_usd_per_mtok__isnull=True)),
                name="model_price_not_negative",
            ),
        ]

    def __str__(self) -> str:
        prices = f"${self.input_usd_per_mtok}/${self.output_usd_per_mtok}"
        return f"{self.model_pattern} from {self.valid_from:%Y-%m-%d}: {prices} per 1M"


class Conversation(models.Model):
    """Every event with a conversation_id belongs to one conversation of its business.

    Folded from the stored events by the folder (metrics_app/folding): first
    and last event time, turns (events) and whether any event requested an
    appointment, was booked or asked for a human. An outcome recorded later (a
    booking confirmed by another system) sets the flags too, on the
    conversation's latest event as well, so a conversation's flags are always
    those of its events taken together.
    """

    business = models.ForeignKey(Business, on_delete=models.PROTECT, db_column="business_id", related_name="+")
    conversation_id = models.CharField(max_length=MAX_ID_LENGTH)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    turns = models.PositiveIntegerField(default=0)
    appointment_requested = models.BooleanField(default=False)
    appointment_booked = models.BooleanField(default=False)
    human_handoff_requested = models.BooleanField(default=False)
    outcome_recorded_at = models.DateTimeField(null=True, blank=True, help_text="When an outcome was last recorded.")
    outcome_note = models.CharField(max_length=300, blank=True)
    # The sentiment of its latest scored event (by time, then id), and that event's time: a conversation
    # "ended negative" when this is negative once it has ended (Business.conversation_idle_minutes).
    last_sentiment = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True, editable=False)
    last_sentiment_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The values its events carry, per dimension ({"intent": ["booking", ""], ...}; "" for a missing one): the
    # folder counts the conversation once under each of them in the per-value conversation rollups.
    dimension_values = models.JSONField(default=dict, blank=True, editable=False)

    class Meta:
        db_table = "mlops_conversation"
        constraints = [
            models.UniqueConstraint(fields=["business", "conversation_id"], name="conversation_business_id_uniq"),
        ]
        indexes = [
            # Conversation-level figures and the conversation list: conversations
            # of a business that started in a period.
            models.Index(fields=["business", "first_at"], name="conversation_biz_first_idx"),
            # The same over all businesses.
            models.Index(fields=["first_at"], name="conversation_first_idx"),
            # Conversations that went quiet or ended in a period (follow-ups, ended negative).
            models.Index(fields=["business", "last_at"], name="conversation_biz_last_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.business_id} / {self.conversation_id}"


class StaffBusinessAccess(models.Model):
    """A grant of one business (or, with no business, of every business) to a staff user.

    A staff user sees exactly what their rows grant and nothing without one, so
    deleting a business (its rows cascade) or a grant can only narrow what
    someone sees. Superusers see every business without a row.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="business_access")
    business = models.ForeignKey(
        Business,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
        help_text="Leave empty to grant every business.",
    )
    weekly_digest = models.BooleanField(
        default=True,
        verbose_name="mail the weekly digest",
        help_text="Mail this user the business's weekly digest (a grant naming one business; docs/digest.md).",
    )

    class Meta:
        db_table = "mlops_staff_business_access"
        verbose_name = "staff business access"
        verbose_name_plural = "staff business access"
        constraints = [
            models.UniqueConstraint(fields=["user", "business"], name="staff_access_user_business_uniq"),
            # NULLs are distinct in the constraint above: one all-businesses grant per user, by this one.
            models.UniqueConstraint(
                fields=["user"], condition=Q(business__isnull=True), name="staff_access_one_all_grant"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} may see {self.business_id or 'every business'}"

    @property
    def grants_every_business(self) -> bool:
        return self.business_id is None


class DigestStatus(models.TextChoices):
    CLAIMED = "claimed", "claimed, being sent"
    SENT = "sent", "sent"
    FAILED = "failed", "failed, to be retried"


class DigestDelivery(models.Model):
    """One business's weekly digest for one week: claimed by one sender before any mail leaves, then sent.

    The unique (business, week_start) makes the claim: of two senders, in two
    processes or on two machines, only the one whose INSERT lands sends.
    `sent_to` lists the users already mailed, so a sender taking over a stale
    claim (its process died) mails only the others.
    """

    business = models.ForeignKey(Business, on_delete=models.CASCADE, related_name="+")
    week_start = models.DateField(help_text="The Monday the week begins, in the business's time zone.")
    status = models.CharField(max_length=8, choices=DigestStatus.choices, default=DigestStatus.CLAIMED)
    claimed_at = models.DateTimeField(default=timezone.now)
    claimed_by = models.CharField(max_length=200, blank=True, help_text="host and process of the sender")
    attempts = models.PositiveSmallIntegerField(default=1)
    sent_to = models.JSONField(default=list, blank=True, help_text="ids of the users mailed so far")
    sent_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        db_table = "mlops_digest_delivery"
        verbose_name = "weekly digest"
        verbose_name_plural = "weekly digests"
        constraints = [
            # The exactly-once claim; its index also answers "is this week done" for the hourly job.
            models.UniqueConstraint(fields=["business", "week_start"], name="digest_business_week_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.business_id}, week of {self.week_start}: {self.get_status_display()}"


ALL_BUSINESSES = "*"  # the business_id of rollup rows that sum every business
ALL_EVENTS = ""  # the dimension (and value) of rollup rows that sum every event, whatever its labels
DIMENSION_VALUE_MAX_LENGTH = max(MAX_LABEL_LENGTH, MAX_RESPONSE_TYPE_LENGTH)


class EventRollup(models.Model):
    """Sums of the event figures per business, dimension value and 15-minute UTC bucket, kept by the folder.

    Every zone's local hours start on a quarter hour (UTC offsets are whole
    multiples of 15 minutes), so hour and day buckets in any zone, including
    +05:30, +05:45 and +08:45, are exact sums of these rows. Rows with
    business_id "*" sum every business; rows with dimension "" sum every
    event, and rows with a dimension (intent, model, ...) sum the events with
    one value of it ("" for events without one). The folder adds each stored
    event once, so duplicates never count.
    """

    business_id = models.CharField(max_length=BUSINESS_ID_MAX_LENGTH)
    dimension = models.CharField(max_length=16, default=ALL_EVENTS, blank=True)
    value = models.CharField(max_length=DIMENSION_VALUE_MAX_LENGTH, default="", blank=True)
    bucket = models.DateTimeField(help_text="Start of the 15-minute UTC bucket.")
    events = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    success_sum = models.DecimalField(max_digits=20, decimal_places=4, default=0)
    latency_sum = models.BigIntegerField(default=0)
    latency_n = models.BigIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=30, decimal_places=10, default=0)
    cache_savings = models.DecimalField(max_digits=30, decimal_places=10, default=0)
    client_cost = models.DecimalField(max_digits=30, decimal_places=10, default=0)
    unpriced = models.BigIntegerField(default=0)
    estimated = models.BigIntegerField(default=0)
    requested = models.BigIntegerField(default=0)
    booked = models.BigIntegerField(default=0)
    handoffs = models.BigIntegerField(default=0)
    # Sum and count of the events' user_sentiment (decimals of four places: sums are exact in any order).
    sentiment_sum = models.DecimalField(max_digits=20, decimal_places=4, default=0)
    sentiment_n = models.BigIntegerField(default=0)

    class Meta:
        db_table = "mlops_event_rollup"
        constraints = [
            # Also the index of every rollup read: WHERE business_id = %s AND dimension = %s [AND value = %s]
            # AND bucket BETWEEN ...
            models.UniqueConstraint(
                fields=["business_id", "dimension", "value", "bucket"], name="event_rollup_slice_bucket_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.business_id}/{self.dimension}={self.value} @ {self.bucket:%Y-%m-%d %H:%M}: {self.events} events"


class ConversationRollup(models.Model):
    """Conversations per business, dimension value and 15-minute UTC bucket of their first event, with their flags.

    A conversation counts once in the rows of dimension "", and once under
    each value of a dimension that one of its events carries. The folder
    moves a conversation to an earlier bucket when a late event turns out to
    be its first, and adds a flag or a value when an event or a recorded
    outcome brings one, so the counts stay exact.
    """

    business_id = models.CharField(max_length=BUSINESS_ID_MAX_LENGTH)
    dimension = models.CharField(max_length=16, default=ALL_EVENTS, blank=True)
    value = models.CharField(max_length=DIMENSION_VALUE_MAX_LENGTH, default="", blank=True)
    bucket = models.DateTimeField()
    started = models.BigIntegerField(default=0)
    requested = models.BigIntegerField(default=0)
    booked = models.BigIntegerField(default=0)
    handoffs = models.BigIntegerField(default=0)

    class Meta:
        db_table = "mlops_conversation_rollup"
        constraints = [
            models.UniqueConstraint(
                fields=["business_id", "dimension", "value", "bucket"], name="conv_rollup_slice_bucket_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.business_id}/{self.dimension}={self.value} @ {self.bucket:%Y-%m-%d %H:%M}: {self.started}"


class LatencySketch(models.Model):
    """A mergeable latency sketch per business, dimension value and bucket: event counts per logarithmic bin.

    Bin b >= 1 holds latencies in (g^(b-2), g^(b-1)] ms with g = 1.01/0.99, so
    a bin's midpoint is within 1% of every latency in it; bin 0 holds 0 ms.
    `bins` packs the non-empty bins of one bucket (see
    metrics_app/analytics/sketches.py), so a 30-day hourly series reads 2,880
    rows, not one row per bin. Kept for 15-minute buckets (series, period
    edges) and UTC days (long periods read 30 day rows).
    """

    business_id = models.CharField(max_length=BUSINESS_ID_MAX_LENGTH)
    dimension = models.CharField(max_length=16, default=ALL_EVENTS, blank=True)
    value = models.CharField(max_length=DIMENSION_VALUE_MAX_LENGTH, default="", blank=True)
    span_minutes = models.PositiveSmallIntegerField(help_text="15 or 1440.")
    bucket = models.DateTimeField()
    bins = models.BinaryField()

    class Meta:
        db_table = "mlops_latency_sketch"
        constraints = [
            models.UniqueConstraint(
                fields=["business_id", "dimension", "value", "span_minutes", "bucket"], name="latency_sketch_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.business_id}/{self.dimension}={self.value} @ {self.bucket:%Y-%m-%d %H:%M}/{self.span_minutes}m"


FOLDER_NAME = "events"  # the one row of FolderState


class FolderState(models.Model):
    """How far the background folder has folded the events into conversations and rollups.

    Every event whose id is at most `folded_through` is in the rollups and the
    conversations; every later one is not yet (the reads add that tail
    themselves). The row is also the folder's lease: only the process named in
    `holder` folds, until `lease_until`; another takes over once it expires.
    """

    name = models.CharField(primary_key=True, max_length=32)
    folded_through = models.BigIntegerField(default=0, help_text="Highest event id folded; every lower id is too.")
    holder = models.CharField(max_length=200, blank=True, help_text="The folder process holding the lease.")
    lease_until = models.DateTimeField(null=True, blank=True)
    folded_at = models.DateTimeField(null=True, blank=True, help_text="When the last batch was folded.")
    events_folded = models.BigIntegerField(default=0, help_text="Events folded since the state was made.")
    errors = models.BigIntegerField(default=0, help_text="Fold attempts that failed.")
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    rebuild_needed = models.BooleanField(
        default=False, help_text="The rollups' layout changed: rebuild_analytics must run before the folder folds."
    )

    class Meta:
        db_table = "mlops_folder_state"
        verbose_name = "folder state"

    def __str__(self) -> str:
        return f"{self.name}: folded through event {self.folded_through}"


class TotalsColumns(models.Model):
    """The columns of a /metrics totals row: the sums of the events of one (business, model, intent, response type).

    Empty strings stand for a missing value. `histograms` holds the bucket
    counts and sums of the latency and token histograms, in the layout
    metrics_app/analytics/totals.py writes.
    """

    business_id = models.CharField(max_length=BUSINESS_ID_MAX_LENGTH)
    model_name = models.CharField(max_length=MAX_LABEL_LENGTH, blank=True)
    intent = models.CharField(max_length=MAX_LABEL_LENGTH, blank=True)
    response_type = models.CharField(max_length=MAX_RESPONSE_TYPE_LENGTH, blank=True)
    events = models.BigIntegerField(default=0)
    failed = models.BigIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)
    client_cost = models.DecimalField(max_digits=30, decimal_places=10, default=0)
    requested = models.BigIntegerField(default=0)
    booked = models.BigIntegerField(default=0)
    handoffs = models.BigIntegerField(default=0)
    histograms = models.JSONField(default=dict)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.business_id}/{self.model_name}/{self.intent}/{self.response_type}: {self.events} events"


class MetricTotals(TotalsColumns):
    """Running totals of the folded events per (business, model, intent, response type): what /metrics reports.

    The folder adds each event once, in the transaction that folds it, so the
    Prometheus counters read from here equal the stored events whatever
    happens to a server process.
    """

    class Meta:
        db_table = "mlops_metric_totals"
        verbose_name_plural = "metric totals"
        constraints = [
            models.UniqueConstraint(
                fields=["business_id", "model_name", "intent", "response_type"], name="metric_totals_labels_uniq"
            ),
        ]


class PrunedTotals(TotalsColumns):
    """The /metrics totals of the raw events that retention removed, added as they went.

    A rebuild of MetricTotals starts from these and adds the events still
    stored, so the Prometheus counters never fall when raw events are pruned.
    """

    class Meta:
        db_table = "mlops_pruned_totals"
        verbose_name_plural = "pruned totals"
        constraints = [
            models.UniqueConstraint(
                fields=["business_id", "model_name", "intent", "response_type"], name="pruned_totals_labels_uniq"
            ),
        ]


class EventKey(models.Model):
    """The dedupe key of every stored event: (business, event id), once.

    It lives apart from ai_metrics because a unique index on a partitioned
    table must hold the partition key (the event's time), and a retry that
    carries no time of its own gets a new one. Ingest claims the key and
    stores the event in one transaction; retention and erasure delete the
    key with its event.
    """

    pk = models.CompositePrimaryKey("business_id", "event_id")
    business_id = models.CharField(max_length=BUSINESS_ID_MAX_LENGTH)
    event_id = models.UUIDField()

    class Meta:
        db_table = "mlops_event_key"

    def __str__(self) -> str:
        return f"{self.business_id} {self.event_id}"


RETENTION_NAME = "events"  # the one row of RetentionState


class RetentionState(models.Model):
    """What retention has removed of the raw events: every event before `pruned_before` is gone.

    The rollups, conversations and /metrics totals of the pruned periods stay;
    rebuilds recompute only from `pruned_before` on.
    """

    name = models.CharField(primary_key=True, max_length=32)
    pruned_before = models.DateTimeField(
        null=True, blank=True, help_text="No raw event before this time is stored; None when nothing was pruned."
    )
    events_pruned = models.BigIntegerField(default=0, help_text="Raw events removed by retention in all.")
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_run_events = models.BigIntegerField(default=0, help_text="Raw events removed by the last run.")
    last_run_summary = models.TextField(blank=True)

    class Meta:
        db_table = "mlops_retention_state"
        verbose_name = "retention state"

    def __str__(self) -> str:
        return f"{self.name}: pruned before {self.pruned_before or 'nothing'}"


class ExperimentDimension(models.TextChoices):
    """What an experiment varies: one of the event labels the chat app sends."""

    PROMPT_VERSION = "prompt_version", "prompt version"
    KB_VERSION = "kb_version", "knowledge-base version"
    MODEL = "model", "model"


class ExperimentMetric(models.TextChoices):
    """The conversation rate an experiment's verdict is about."""

    BOOKING_RATE = "booking_rate", "booking rate"
    APPOINTMENT_REQUEST_RATE = "appointment_request_rate", "appointment request rate"
    HANDOFF_RATE = "handoff_rate", "handoff rate (lower is better)"
    ERROR_RATE = "error_rate", "error rate (lower is better)"


class Experiment(models.Model):
    """A planned comparison of two values of one dimension for one business, from a fixed start.

    The arms, the dimension and the start cannot change once it exists: its
    verdict reads only the conversations since the start, so the window
    cannot be slid until the figures look good. Stopping it sets `ended_at`.
    The name is also the salt of the clients' assignment hash.
    """

    business = models.ForeignKey(Business, on_delete=models.CASCADE, related_name="experiments")
    name = models.SlugField(
        max_length=100, help_text="Unique per business; the clients hash it with the conversation id to pick an arm."
    )
    description = models.CharField(max_length=500, blank=True, help_text="The hypothesis, in a sentence.")
    dimension = models.CharField(max_length=20, choices=ExperimentDimension.choices,
                                 default=ExperimentDimension.PROMPT_VERSION)
    variant_a = models.CharField(max_length=MAX_LABEL_LENGTH, help_text="The control: the value now in use.")
    variant_b = models.CharField(max_length=MAX_LABEL_LENGTH, help_text="The challenger.")
    split_a = models.FloatField(
        default=0.5, help_text="The planned share of conversations for variant a, strictly between 0 and 1."
    )
    primary_metric = models.CharField(max_length=32, choices=ExperimentMetric.choices,
                                      default=ExperimentMetric.BOOKING_RATE)
    minimum_lift = models.FloatField(
        default=0.05,
        help_text="The smallest difference of the primary rate that matters, in rate points (0.05 = 5 points).",
    )
    started_at = models.DateTimeField(default=timezone.now, help_text="Only conversations from here on count.")
    ended_at = models.DateTimeField(null=True, blank=True, help_text="Set when the experiment is stopped.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, editable=False
    )

    class Meta:
        db_table = "mlops_experiment"
        constraints = [
            models.UniqueConstraint(fields=["business", "name"], name="experiment_business_name_uniq"),
            models.CheckConstraint(condition=~Q(variant_a=models.F("variant_b")), name="experiment_distinct_arms"),
            models.CheckConstraint(condition=Q(split_a__gt=0, split_a__lt=1), name="experiment_split_range"),
            models.CheckConstraint(condition=Q(minimum_lift__gt=0, minimum_lift__lt=1),
                                   name="experiment_minimum_lift_range"),
            models.CheckConstraint(condition=Q(ended_at__isnull=True) | Q(ended_at__gt=models.F("started_at")),
                                   name="experiment_ends_after_start"),
        ]
        indexes = [
            # The experiment list of a business, newest first (API and admin).
            models.Index(fields=["business", "-started_at"], name="experiment_business_start_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.business_id}/{self.name}: {self.dimension} {self.variant_a} vs {self.variant_b}"

    @property
    def is_running(self) -> bool:
        return self.ended_at is None


class BookingModelStatus(models.TextChoices):
    """What a training of the likely-bookings model concluded (metrics_app/predictions)."""

    USABLE = "usable", "usable: beats the base rate on held-out conversations"
    NOT_ENOUGH_DATA = "not_enough_data", "no predictions: too few ended or booked conversations"
    NO_BETTER = "no_better", "no predictions: no better than the base rate on held-out conversations"


class BookingModel(models.Model):
    """One training of a business's likely-bookings model: its coefficients, its held-out evaluation, its verdict.

    Only a `usable` model gives predictions; any other status keeps the reason
    shown instead. `spec` holds what predicting needs (feature names and
    vocabularies, standardisation, coefficients), `metrics` the held-out
    figures, `reliability` the calibration table. The last few per business
    are kept (metrics_app/predictions/services.py).
    """

    business = models.ForeignKey(Business, on_delete=models.CASCADE, related_name="booking_models")
    trained_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=16, choices=BookingModelStatus.choices)
    reason = models.CharField(max_length=500, help_text="Why it is usable or not, in a sentence.")
    spec = models.JSONField(default=dict, blank=True, help_text="Features, vocabularies, scaling, coefficients.")
    metrics = models.JSONField(default=dict, blank=True, help_text="Held-out Brier scores, base rate, counts.")
    reliability = models.JSONField(default=list, blank=True, help_text="Ten equal-width bins of held-out prefixes.")

    class Meta:
        db_table = "mlops_booking_model"
        verbose_name = "booking model"
        indexes = [
            # The latest training of a business (predictions, the follow-up page) and the pruning of old ones.
            models.Index(fields=["business", "-trained_at"], name="booking_model_biz_trained_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.business_id} at {self.trained_at:%Y-%m-%d %H:%M}: {self.status}"

    @property
    def usable(self) -> bool:
        return self.status == BookingModelStatus.USABLE


class ErasureKind(models.TextChoices):
    CONVERSATION = "conversation", "a conversation"
    BUSINESS = "business", "a whole business"


class ErasureRecord(models.Model):
    """Who erased what and when (metrics_app/erasure). It keeps no erased data, only counts.

    A conversation is named by a SHA-256 digest of its business and id, not the
    id itself (a chat app may use a phone number as one): whoever knows the id
    can check the record, and the record tells no one else what it was.
    """

    kind = models.CharField(max_length=16, choices=ErasureKind.choices)
    business_id = models.CharField(max_length=BUSINESS_ID_MAX_LENGTH, help_text="The business, which may be gone.")
    conversation_digest = models.CharField(
        max_length=64, blank=True, help_text="SHA-256 of business id, 0x1f and conversation id (hex)."
    )
    erased_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    erased_by_name = models.CharField(max_length=150, help_text="The user's name when they erased it.")
    erased_at = models.DateTimeField(default=timezone.now)
    events = models.BigIntegerField(default=0, help_text="Events erased.")
    conversations = models.BigIntegerField(default=0, help_text="Conversations erased.")
    erased = models.JSONField(
        default=dict, blank=True,
        help_text="A business erasure's counts of what it erased, by kind (rows, documents, DVC objects).",
    )
    reason = models.CharField(max_length=300, blank=True, help_text='Why, e.g. "the customer asked".')

    class Meta:
        db_table = "mlops_erasure_record"
        indexes = [
            # The erasures of a business, newest first (the admin's list filtered by business).
            models.Index(fields=["business_id", "-erased_at"], name="erasure_business_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.business_id} by {self.erased_by_name} at {self.erased_at:%Y-%m-%d}"


def conversation_digest(business_id: str, conversation_id: str) -> str:
    return hashlib.sha256(f"{business_id}\x1f{conversation_id}".encode()).hexdigest()
