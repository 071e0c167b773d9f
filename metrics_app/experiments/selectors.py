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
from django.db.models import Count, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from metrics_app import database
from metrics_app.analytics import selectors as analytics
from metrics_app.experiments import assignment, statistics
from metrics_app.models import Conversation, Experiment, ExperimentMetric
from metrics_app.replica import reading
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


IntArray = npt.NDArray[np.int64]
# The saved experiment's hash check reads at most this many conversations' ids: a broken assignment shows in any
# sample, and reading every id of a million conversations would be most of a compare.
HASH_CHECK_LIMIT = 20_000


@dataclass
class _Arm:
    """An arm's conversations: per local day of the period (by the day each began), and sums over all of them."""

    started: IntArray
    booked: IntArray
    requested: IntArray
    handed_off: IntArray
    errored: IntArray
    events: int = 0
    cost: float = 0.0
    cost_squares: float = 0.0
    with_latency: int = 0
    latency: float = 0.0  # the sum of each conversation's mean latency
    latency_squares: float = 0.0
    checked_by_hash: int = 0
    other_arm_by_hash: int = 0

    @classmethod
    def empty(cls, days: int) -> _Arm:
        def zeros() -> IntArray:
            return np.zeros(days, dtype=np.int64)

        return cls(started=zeros(), booked=zeros(), requested=zeros(), handed_off=zeros(), errored=zeros())

    @property
    def conversations(self) -> int:
        return int(self.started.sum())

    def count(self, flag: str) -> int:
        return int(getattr(self, flag).sum())

    @property
    def cost_sample(self) -> statistics.Sample:
        return statistics.Sample.from_sums(self.conversations, self.cost, self.cost_squares)

    @property
    def latency_sample(self) -> statistics.Sample:
        return statistics.Sample.from_sums(self.with_latency, self.latency, self.latency_squares)


def _per_conversation(question: Question) -> QuerySet[Any, Any]:
    """One row per conversation with an event of either value in the period: its counts and sums there."""
    filters = question.filters
    events = analytics.events_in(filters).exclude(conversation_id__isnull=True).exclude(conversation_id="")
    return events.values("business_id", "conversation_id").annotate(
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
    ).filter(Q(on_a__gt=0) | Q(on_b__gt=0)).order_by()


def _arm_sums_sql(question: Question) -> tuple[str, list[Any]]:
    """The conversations summed per (arm, begun before the period, local day): a few rows per day.

    Arm "both" holds the conversations that carry both values. A conversation
    began before the period when its folded conversation starts earlier and
    ends inside it (read by conversation_biz_first_idx); one not folded yet has
    no earlier event folded either. The sums of squares give the t-tests their
    variances without reading a row per conversation.
    """
    inner, params = _per_conversation(question).query.sql_with_params()
    filters = question.filters
    earlier = (f"SELECT business_id, conversation_id FROM {reading().ops.quote_name(Conversation._meta.db_table)} "
               "WHERE first_at < %s AND last_at >= %s")
    earlier_params: list[Any] = [filters.start, filters.start]
    if filters.businesses is not None:
        earlier += f" AND business_id IN ({', '.join(['%s'] * len(filters.businesses))})"
        earlier_params.extend(sorted(filters.businesses))
    latency = "CASE WHEN t.latency_n > 0 THEN t.latency_sum * 1.0 / t.latency_n END"
    flagged = ", ".join(f"SUM(CASE WHEN t.{column} > 0 THEN 1 ELSE 0 END)"
                        for column in ("booked", "requested", "handoffs", "errors"))
    sql = (
        "SELECT CASE WHEN t.on_a > 0 AND t.on_b > 0 THEN 'both' WHEN t.on_a > 0 THEN 'a' ELSE 'b' END AS arm, "
        "CASE WHEN e.conversation_id IS NULL THEN 0 ELSE 1 END AS earlier, "
        f"t.first_day, COUNT(*), SUM(t.events), {flagged}, SUM(t.cost), SUM(t.cost * t.cost), "
        f"COUNT({latency}), SUM({latency}), SUM(({latency}) * ({latency})) "
        f"FROM ({inner}) t LEFT JOIN ({earlier}) e "
        "ON e.business_id = t.business_id AND e.conversation_id = t.conversation_id "
        "GROUP BY 1, 2, 3"
    )
    return sql, [*params, *earlier_params]


def _conversations(question: Question, days: list[date]) -> tuple[dict[str, _Arm], int, int]:
    """The arms' conversations, how many carried both values, and how many began before the period."""
    index = {day: i for i, day in enumerate(days)}
    arms = {name: _Arm.empty(len(days)) for name in ARMS}
    both = before = 0
    sql, params = _arm_sums_sql(question)
    with reading().cursor() as cursor:
        if reading().vendor == "postgresql":
            # For this transaction only (so also behind a transaction pooler). JIT compiling the grouped query
            # took 0.3 s of a compare of a million events; its per-conversation hash table (130 MB for 150,000
            # conversations) spilled to disk at the default work_mem (hash tables get twice work_mem).
            cursor.execute("SET LOCAL jit = off")
            cursor.execute("SET LOCAL work_mem = '96MB'")
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    for (arm_name, earlier, day, count, events, booked, requested, handoffs, errors, cost, cost_squares,
         with_latency, latency, latency_squares) in rows:
        if arm_name == "both":
            both += count
            continue
        if earlier:
            before += count
            continue
        position = index[date.fromisoformat(day[:10]) if isinstance(day, str) else day]
        arm = arms[arm_name]
        arm.started[position] += count
        arm.booked[position] += booked
        arm.requested[position] += requested
        arm.handed_off[position] += handoffs
        arm.errored[position] += errors
        arm.events += int(events)
        arm.cost += float(cost or 0)
        arm.cost_squares += float(cost_squares or 0)
        arm.with_latency += int(with_latency)
        arm.latency += float(latency or 0)
        arm.latency_squares += float(latency_squares or 0)
    if question.experiment is not None and question.split_a is not None:
        _check_hash(question, arms)
    return arms, both, before


def _check_hash(question: Question, arms: dict[str, _Arm]) -> None:
    """Count, in up to HASH_CHECK_LIMIT conversations of one arm, those the assignment hash puts in the other."""
    rows = _per_conversation(question).exclude(on_a__gt=0, on_b__gt=0).values_list("conversation_id", "on_a")
    sql, params = rows[:HASH_CHECK_LIMIT].query.sql_with_params()
    with reading().cursor() as cursor:
        cursor.execute(sql, params)
        sampled = cursor.fetchall()
    assert question.experiment is not None and question.split_a is not None
    for conversation_id, on_a in sampled:
        name = "a" if on_a else "b"
        expected = assignment.assign_variant(question.experiment, str(conversation_id), question.variants,
                                             question.split_a)
        arms[name].checked_by_hash += 1
        arms[name].other_arm_by_hash += expected != question.variants[ARMS.index(name)]


def _interval(found: statistics.Interval | None) -> dict[str, float] | None:
    return None if found is None else {"value": found.value, "ci_low": found.low, "ci_high": found.high}


def _difference(found: statistics.Difference | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {"difference": found.difference, "ci_low": found.low, "ci_high": found.high, "p_value": found.p_value,
            "test": found.test}


def _arm_figures(question: Question, name: str, arm: _Arm, latency: dict[str, float | None]) -> dict[str, Any]:
    n = arm.conversations
    cost = arm.cost
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
        "conversation_latency_mean_ms": _interval(statistics.mean_interval(arm.latency_sample)),
        "cost_usd": cost,
        "cost_per_conversation_usd": _interval(statistics.mean_interval(arm.cost_sample)),
        "cost_per_booked_appointment_usd": cost / booked if booked else None,
        "conversations_checked_by_hash": arm.checked_by_hash if question.experiment else None,
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


def _cumulative(arm: _Arm, flag: str) -> tuple[IntArray, IntArray]:
    """Conversations and conversations with `flag`, cumulated by the day each began, for every day."""
    return np.cumsum(arm.started), np.cumsum(getattr(arm, flag))


def _rate(successes: float, trials: float) -> float | None:
    return float(successes) / float(trials) if trials else None


def _verdict(question: Question, arms: dict[str, _Arm], days: list[date]) -> tuple[dict[str, Any], list[dict]]:
    flag = RATES[question.primary_metric]
    n_a, x_a = _cumulative(arms["a"], flag)
    n_b, x_b = _cumulative(arms["b"], flag)
    booked_a = _cumulative(arms["a"], "booked")[1]
    booked_b = _cumulative(arms["b"], "booked")[1]
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
    found["cost_per_conversation_usd"] = _difference(statistics.mean_difference(a.cost_sample, b.cost_sample))
    found["conversation_latency_mean_ms"] = _difference(
        statistics.mean_difference(a.latency_sample, b.latency_sample))
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
    with database.snapshot(reading()):
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
