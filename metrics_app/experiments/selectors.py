"""Compare two values of one dimension: per-arm figures from the conversations, their tests and the verdict.

The conversation is the unit. A conversation belongs to arm a when one of
its events in the period carries value a of the dimension and none carries
b (and the other way round); one that carries both is counted apart and left
out of both arms, and so is one that began before the period (it met the old
setup first). Its flags, cost and latency are those of all its events in the
period. The conversations are read in one grouped query, one row each, in
one snapshot with the arms' latency percentiles (from the rollups, as a
summary filtered by the value reads them); definitions and the assumptions
of each test: docs/analytics.md, "Experiments".
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from django.db import connection
from django.db.models import Count, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from metrics_app import database
from metrics_app.analytics import selectors as analytics
from metrics_app.experiments import assignment, statistics
from metrics_app.models import Conversation, Experiment, ExperimentMetric
from metrics_app.rules import FAILED_REPLY

# What each conversation rate counts, and whether less of it is better.
RATES = {
    ExperimentMetric.BOOKING_RATE.value: "booked",
    ExperimentMetric.APPOINTMENT_REQUEST_RATE.value: "requested",
    ExperimentMetric.HANDOFF_RATE.value: "handed_off",
    ExperimentMetric.ERROR_RATE.value: "errored",
}
LOWER_IS_BETTER = {ExperimentMetric.HANDOFF_RATE.value, ExperimentMetric.ERROR_RATE.value}
ARMS = ("a", "b")
# A compare reads one row per conversation; past this many it refuses (a shorter period answers).
MAX_CONVERSATIONS = 1_000_000


class TooManyConversations(Exception):
    """The period holds more conversations than one compare reads."""


@dataclass(frozen=True)
class Question:
    """What a compare asks: two values of a dimension, over the filters' businesses and period."""

    filters: analytics.Filters
    dimension: str
    a: str
    b: str
    primary_metric: str = ExperimentMetric.BOOKING_RATE.value
    minimum_lift: float = 0.05
    lift: float | None = None  # the lift the sample size is for; the minimum lift when None
    split_a: float | None = None  # the planned share of arm a; None: no split was planned
    experiment: str | None = None  # the experiment's name: its conversations' arms are checked against the hash

    @property
    def column(self) -> str:
        return analytics.DIMENSIONS[self.dimension]

    @property
    def variants(self) -> tuple[str, str]:
        return self.a, self.b


def question_of(experiment: Experiment, *, now: datetime, tz: zoneinfo.ZoneInfo | None = None,
                lift: float | None = None) -> Question:
    """The compare an experiment stands for: its business, arms and start, to its end or now."""
    end = min(experiment.ended_at or now, now)
    zone = tz or zoneinfo.ZoneInfo(analytics.time_zone_of([experiment.business_id]))
    filters = analytics.Filters(businesses=frozenset([experiment.business_id]), start=experiment.started_at,
                                end=max(end, experiment.started_at + timedelta(microseconds=1)), tz=zone)
    return Question(filters, experiment.dimension, experiment.variant_a, experiment.variant_b,
                    experiment.primary_metric, experiment.minimum_lift, lift, experiment.split_a, experiment.name)


BoolArray = npt.NDArray[np.bool_]


@dataclass
class _Arm:
    """The conversations of one arm, one entry per conversation in each array."""

    day: npt.NDArray[np.int64]  # the index, among the period's local days, of the day it began
    booked: BoolArray
    requested: BoolArray
    handed_off: BoolArray
    errored: BoolArray
    cost: npt.NDArray[np.float64]
    latency: npt.NDArray[np.float64]  # the mean latency of each conversation that has one
    events: int
    other_arm_by_hash: int

    @property
    def conversations(self) -> int:
        return len(self.day)

    def count(self, flag: str) -> int:
        return int(np.count_nonzero(getattr(self, flag)))


def _began_earlier(question: Question) -> set[tuple[str, str]]:
    """Conversations that began before the period and went on into it.

    Read from the folded conversations of the businesses, by their start
    (conversation_biz_first_idx): a business's earlier conversations, a few
    milliseconds for tens of thousands.
    """
    filters = question.filters
    rows = Conversation.objects.filter(first_at__lt=filters.start, last_at__gte=filters.start)
    if filters.businesses is not None:
        rows = rows.filter(business_id__in=filters.businesses)
    return set(rows.values_list("business_id", "conversation_id"))


def _fetched(rows: QuerySet[Any, Any]) -> list[tuple[Any, ...]]:
    """The rows of a values_list query as the database driver gives them.

    Django's per-value converters (decimals, datetimes) were 40% of a compare
    of 100,000 events; the columns are converted whole below instead. A
    plain cursor, not a server-side one, so it runs behind a transaction pooler.
    """
    sql, params = rows.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _day_indexes(values: tuple[Any, ...], days: list[date]) -> npt.NDArray[np.int64]:
    """Each local date the database gave (a date, or text on SQLite) as its index among `days`."""
    index = {day: i for i, day in enumerate(days)}
    found: dict[Any, int] = {}
    result = np.empty(len(values), dtype=np.int64)
    for position, value in enumerate(values):
        known = found.get(value)
        if known is None:
            day = date.fromisoformat(value[:10]) if isinstance(value, str) else value
            known = found[value] = index[day]
        result[position] = known
    return result


_COLUMNS = ("business_id", "conversation_id", "on_a", "on_b", "first_day", "events", "errors", "requested", "booked",
            "handoffs", "cost", "latency_sum", "latency_n")


def _conversations(question: Question, days: list[date]) -> tuple[dict[str, _Arm], int, int]:
    """The arms' conversations, how many carried both values, and how many began before the period."""
    filters = question.filters
    events = analytics.events_in(filters).exclude(conversation_id__isnull=True).exclude(conversation_id="")
    rows = events.values("business_id", "conversation_id").annotate(
        on_a=Count("id", filter=Q(**{question.column: question.a})),
        on_b=Count("id", filter=Q(**{question.column: question.b})),
        first_day=TruncDate(Min("timestamp"), tzinfo=filters.tz),
        events=Count("id"),
        errors=Count("id", filter=FAILED_REPLY),
        requested=Count("id", filter=Q(appointment_requested=True)),
        booked=Count("id", filter=Q(appointment_booked=True)),
        handoffs=Count("id", filter=Q(human_handoff_requested=True)),
        cost=Sum("cost_usd"),
        latency_sum=Sum("response_time_ms"),
        latency_n=Count("response_time_ms"),
    ).filter(Q(on_a__gt=0) | Q(on_b__gt=0)).order_by().values_list(*_COLUMNS)[:MAX_CONVERSATIONS + 1]
    fetched = _fetched(rows)
    if len(fetched) > MAX_CONVERSATIONS:
        raise TooManyConversations(f"the period holds more than {MAX_CONVERSATIONS:,} conversations of the two "
                                   "variants; shorten it")
    column = dict(zip(_COLUMNS, zip(*fetched, strict=True), strict=True)) if fetched else {
        name: () for name in _COLUMNS}
    on_a, on_b = np.array(column["on_a"], dtype=np.int64) > 0, np.array(column["on_b"], dtype=np.int64) > 0
    in_both = on_a & on_b
    earlier = _began_earlier(question)
    began_before = np.array([key in earlier for key in zip(column["business_id"], column["conversation_id"],
                                                            strict=True)], dtype=bool) & ~in_both
    day = _day_indexes(column["first_day"], days)
    flags = {name: np.array(column[source], dtype=np.int64) > 0 for name, source in (
        ("booked", "booked"), ("requested", "requested"), ("handed_off", "handoffs"), ("errored", "errors"))}
    cost = np.array([value or 0 for value in column["cost"]], dtype=np.float64)
    latency_n = np.array(column["latency_n"], dtype=np.int64)
    latency_sum = np.array([value or 0 for value in column["latency_sum"]], dtype=np.float64)
    event_counts = np.array(column["events"], dtype=np.int64)
    arms = {}
    for name, member in (("a", on_a), ("b", on_b)):
        chosen = member & ~in_both & ~began_before
        with_latency = chosen & (latency_n > 0)
        arms[name] = _Arm(
            day=day[chosen], **{flag: values[chosen] for flag, values in flags.items()}, cost=cost[chosen],
            latency=latency_sum[with_latency] / latency_n[with_latency], events=int(event_counts[chosen].sum()),
            other_arm_by_hash=_other_arm_by_hash(question, name, np.flatnonzero(chosen), column["conversation_id"]),
        )
    return arms, int(in_both.sum()), int(began_before.sum())


def _other_arm_by_hash(question: Question, name: str, positions: npt.NDArray[np.int64],
                       conversation_ids: tuple[Any, ...]) -> int:
    """How many of an arm's conversations the assignment hash puts in the other arm (saved experiments only)."""
    if question.experiment is None or question.split_a is None:
        return 0
    arm = question.variants[ARMS.index(name)]
    return sum(
        assignment.assign_variant(question.experiment, str(conversation_ids[i]), question.variants,
                                  question.split_a) != arm
        for i in positions
    )


def _interval(found: statistics.Interval | None) -> dict[str, float] | None:
    return None if found is None else {"value": found.value, "ci_low": found.low, "ci_high": found.high}


def _difference(found: statistics.Difference | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {"difference": found.difference, "ci_low": found.low, "ci_high": found.high, "p_value": found.p_value,
            "test": found.test}


def _arm_figures(question: Question, name: str, arm: _Arm, latency: dict[str, float | None]) -> dict[str, Any]:
    n = arm.conversations
    cost = float(np.sum(arm.cost))
    booked = arm.count("booked")
    return {
        "variant": question.variants[ARMS.index(name)],
        "conversations": n,
        "events": arm.events,
        "conversations_booked": booked,
        "conversations_with_request": arm.count("requested"),
        "conversations_handed_off": arm.count("handed_off"),
        "conversations_with_error": arm.count("errored"),
        **{rate: _interval(statistics.wilson(arm.count(flag), n)) for rate, flag in RATES.items()},
        "latency_p50_ms": latency.get("p50"),
        "latency_p95_ms": latency.get("p95"),
        "conversation_latency_mean_ms": _interval(statistics.mean_interval(arm.latency)),
        "cost_usd": cost,
        "cost_per_conversation_usd": _interval(statistics.mean_interval(arm.cost)),
        "cost_per_booked_appointment_usd": cost / booked if booked else None,
        "conversations_on_other_arm_by_hash": arm.other_arm_by_hash if question.experiment else None,
    }


def _latency_percentiles(question: Question) -> dict[str, dict[str, float | None]]:
    """p50 and p95 of the replies that carry each arm's value: the analytics' own, from the sketches of that value."""
    found = {}
    for name, value in zip(ARMS, question.variants, strict=True):
        arm: dict[str, Any] = {question.dimension: value}
        found[name] = analytics.latency_percentiles(replace(question.filters, **arm))
    return found


def _days(filters: analytics.Filters) -> list[date]:
    first = filters.start.astimezone(filters.tz).date()
    last = (filters.end - timedelta(microseconds=1)).astimezone(filters.tz).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _cumulative(arm: _Arm, flag: str, days: list[date]) -> tuple[np.ndarray, np.ndarray]:
    """Conversations and conversations with `flag`, cumulated by the day each began, for every day."""
    started = np.bincount(arm.day, minlength=len(days))
    flagged = np.bincount(arm.day, weights=getattr(arm, flag).astype(np.float64), minlength=len(days))
    return np.cumsum(started), np.cumsum(flagged).astype(np.int64)


def _rate(successes: float, trials: float) -> float | None:
    return float(successes) / float(trials) if trials else None


def _verdict(question: Question, arms: dict[str, _Arm], days: list[date]) -> tuple[dict[str, Any], list[dict]]:
    flag = RATES[question.primary_metric]
    n_a, x_a = _cumulative(arms["a"], flag, days)
    n_b, x_b = _cumulative(arms["b"], flag, days)
    booked_a = _cumulative(arms["a"], "booked", days)[1]
    booked_b = _cumulative(arms["b"], "booked", days)[1]
    tau = question.minimum_lift
    p_values = statistics.always_valid_p_values(n_a, x_a, n_b, x_b, tau) if days else np.array([])
    series = [
        {
            "date": day.isoformat(),
            "a": {"conversations": int(n_a[i]), "conversations_booked": int(booked_a[i]),
                  "booking_rate": _rate(booked_a[i], n_a[i]), question.primary_metric: _rate(x_a[i], n_a[i])},
            "b": {"conversations": int(n_b[i]), "conversations_booked": int(booked_b[i]),
                  "booking_rate": _rate(booked_b[i], n_b[i]), question.primary_metric: _rate(x_b[i], n_b[i])},
            "always_valid_p_value": float(p_values[i]),
        }
        for i, day in enumerate(days)
    ]
    crossed = statistics.first_crossing(p_values)
    last = len(days) - 1
    counts = {"a": (int(n_a[last]), int(x_a[last])) if days else (0, 0),
              "b": (int(n_b[last]), int(x_b[last])) if days else (0, 0)}
    enough = bool(days) and bool(statistics.eligible(n_a[last], x_a[last], n_b[last], x_b[last]))
    lower_better = question.primary_metric in LOWER_IS_BETTER
    winner = None
    if crossed is not None:
        difference = x_b[crossed] / n_b[crossed] - x_a[crossed] / n_a[crossed]
        b_better = difference < 0 if lower_better else difference > 0
        winner = question.b if b_better else question.a
    status = "winner" if winner is not None else "no_difference_yet" if enough else "not_enough_data"
    lift = question.lift if question.lift is not None else question.minimum_lift
    needed = _sample_size(question, counts, lift)
    (n_now_a, _), (n_now_b, _) = counts["a"], counts["b"]
    verdict = {
        "status": status,
        "winner": winner,
        "metric": question.primary_metric,
        "lower_is_better": lower_better,
        "decided_on": days[crossed].isoformat() if crossed is not None else None,
        "always_valid_p_value": float(p_values[-1]) if days else 1.0,
        "alpha": statistics.ALPHA,
        "minimum_lift": question.minimum_lift,
        "test": "mixture sequential probability ratio test (normal mixture, sd = minimum_lift), looked at daily",
        "lift": lift,
        "conversations_needed_per_arm": None if needed is None else {
            "a": needed.sequential_a, "b": needed.sequential_b},
        "conversations_still_needed_per_arm": None if needed is None else {
            "a": max(0, needed.sequential_a - n_now_a), "b": max(0, needed.sequential_b - n_now_b)},
        "fixed_horizon_conversations_per_arm": None if needed is None else {
            "a": needed.fixed_horizon_a, "b": needed.fixed_horizon_b},
    }
    verdict["text"] = _verdict_text(question, verdict, counts)
    return verdict, series


def _sample_size(question: Question, counts: dict[str, tuple[int, int]], lift: float) -> statistics.SampleSize | None:
    """Conversations per arm for `lift` from the control's rate so far (the pooled rate while it has none)."""
    (n_a, x_a), (n_b, x_b) = counts["a"], counts["b"]
    baseline = _rate(x_a, n_a)
    if baseline is None or not 0 < baseline < 1:
        baseline = _rate(x_a + x_b, n_a + n_b)
    if baseline is None or not 0 < baseline < 1:
        return None
    split = question.split_a if question.split_a is not None else (n_a / (n_a + n_b) if n_a and n_b else 0.5)
    signed = -lift if question.primary_metric in LOWER_IS_BETTER else lift
    return statistics.sample_size(baseline, signed, split, question.minimum_lift)


def _points(value: float) -> str:
    return f"{value * 100:+.1f} points"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _verdict_text(question: Question, verdict: dict[str, Any], counts: dict[str, tuple[int, int]]) -> str:
    metric = ExperimentMetric(question.primary_metric).label
    (n_a, x_a), (n_b, x_b) = counts["a"], counts["b"]
    rates = (f"{question.a}: {_percent(_rate(x_a, n_a))} of {n_a:,} conversations, "
             f"{question.b}: {_percent(_rate(x_b, n_b))} of {n_b:,}")
    if verdict["status"] == "winner":
        return (f"{verdict['winner']} wins on {metric} ({rates}); the sequential test decided on "
                f"{verdict['decided_on']} (always-valid p {verdict['always_valid_p_value']:.3g} < "
                f"{statistics.ALPHA}).")
    still = verdict["conversations_still_needed_per_arm"]
    more = (f" To detect a difference of {_points(verdict['lift']).lstrip('+')} it needs about "
            f"{still['a']:,} more conversations in {question.a} and {still['b']:,} in {question.b}."
            if still else "")
    if verdict["status"] == "no_difference_yet":
        return f"No difference in {metric} yet ({rates}).{more}"
    return (f"Not enough data for a verdict on {metric} ({rates}): each arm needs at least "
            f"{statistics.MIN_CONVERSATIONS_PER_ARM} conversations, and {statistics.MIN_OUTCOMES} with and "
            f"without the outcome in both together.{more}")


def _comparisons(arms: dict[str, _Arm]) -> dict[str, Any]:
    a, b = arms["a"], arms["b"]
    found: dict[str, Any] = {
        rate: _difference(statistics.rate_difference(a.count(flag), a.conversations, b.count(flag), b.conversations))
        for rate, flag in RATES.items()
    }
    found["cost_per_conversation_usd"] = _difference(
        statistics.mean_difference(np.asarray(a.cost), np.asarray(b.cost)))
    found["conversation_latency_mean_ms"] = _difference(
        statistics.mean_difference(np.asarray(a.latency), np.asarray(b.latency)))
    return found


def _sample_ratio(question: Question, arms: dict[str, _Arm]) -> dict[str, Any] | None:
    if question.split_a is None:
        return None
    found = statistics.sample_ratio(arms["a"].conversations, arms["b"].conversations, question.split_a)
    text = (f"Sample-ratio mismatch: {_percent(found.observed_share_a)} of conversations are in {question.a}, "
            f"{_percent(found.planned_share_a)} were planned (p {found.p_value:.2g}); the figures may be biased: "
            "check how the chat app assigns conversations." if found.mismatch else "")
    return {"planned_share_a": found.planned_share_a, "observed_share_a": found.observed_share_a,
            "p_value": found.p_value, "mismatch": found.mismatch, "threshold": statistics.SRM_ALPHA, "text": text}


def compare(question: Question) -> dict[str, Any]:
    """Per-arm figures, the differences with their tests, the sequential verdict and the daily cumulative rates."""
    days = _days(question.filters)
    with database.snapshot(connection):
        arms, both, before = _conversations(question, days)
        latency = _latency_percentiles(question)
    verdict, series = _verdict(question, arms, days)
    return {
        "dimension": question.dimension,
        "primary_metric": question.primary_metric,
        "arms": {name: _arm_figures(question, name, arms[name], latency[name]) for name in ARMS},
        "comparisons": _comparisons(arms),
        "verdict": verdict,
        "sample_ratio": _sample_ratio(question, arms),
        "conversations_in_both_arms": both,
        "conversations_begun_before_start": before,
        "series": series,
    }
