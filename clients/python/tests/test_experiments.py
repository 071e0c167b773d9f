"""Assigning a conversation to an arm of an A/B experiment.

The vectors in clients/variant_assignment_vectors.json were computed apart
from this client (hashlib and exact fractions); the TypeScript client and the
service check the same file, so all three put every conversation in the same arm.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlops_tracking import Experiment, assign_variant  # noqa: E402

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "variant_assignment_vectors.json").read_text("utf-8"))
CONVERSATIONS = [f"synthetic-{i}" for i in range(100_000)]


def within_binomial_tolerance(hits: int, n: int, p: float, sds: float = 4.5) -> bool:
    return abs(hits / n - p) < sds * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: f"{v['experiment']}/{v['conversation_id'][:20]}")
def test_each_shared_vector_gets_its_variant(vector: dict[str, Any]) -> None:
    got = assign_variant(vector["experiment"], vector["conversation_id"], vector["variants"], vector["split"])
    assert got == vector["variant"], vector["note"]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["note"])
def test_each_shared_invalid_case_is_refused(case: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        assign_variant(case["experiment"], case["conversation_id"], case["variants"], case["split"])


def test_the_vectors_cover_both_arms_and_the_edge_cases() -> None:
    notes = " ".join(v["note"] for v in VECTORS["vectors"])
    assert {v["variant"] for v in VECTORS["vectors"]} >= {"a", "b", "v6", "v7"}
    for needed in ("4-byte UTF-8", "NFD", "padding boundary", "1000-character", "split 0.1", "split 0.9", "h53 + 1"):
        assert needed in notes


def test_a_split_of_0_3_gives_the_first_variant_to_0_3_of_conversations() -> None:
    hits = sum(assign_variant("split-check", cid, ("a", "b"), 0.3) == "a" for cid in CONVERSATIONS)
    assert within_binomial_tolerance(hits, len(CONVERSATIONS), 0.3), hits


def test_the_default_split_is_even() -> None:
    hits = sum(assign_variant("even-check", cid, ("a", "b")) == "a" for cid in CONVERSATIONS[:20_000])
    assert within_binomial_tolerance(hits, 20_000, 0.5), hits


def test_two_experiments_assign_independently() -> None:
    first = [assign_variant("greeting-2025-06", cid, ("a", "b"), 0.3) for cid in CONVERSATIONS]
    second = [assign_variant("kb-rollout-2025-06", cid, ("a", "b"), 0.3) for cid in CONVERSATIONS]
    agree = sum(x == y for x, y in zip(first, second, strict=True))
    both_a = sum(x == y == "a" for x, y in zip(first, second, strict=True))
    assert within_binomial_tolerance(agree, len(CONVERSATIONS), 0.3**2 + 0.7**2), agree
    assert within_binomial_tolerance(both_a, len(CONVERSATIONS), 0.3**2), both_a


def test_listing_the_variants_the_other_way_round_gives_each_conversation_the_other_variant() -> None:
    for cid in CONVERSATIONS[:2000]:
        forward = assign_variant("order-check", cid, ("v6", "v7"), 0.5)
        backward = assign_variant("order-check", cid, ("v7", "v6"), 0.5)
        assert {forward, backward} == {"v6", "v7"}


def test_raising_the_split_only_moves_conversations_from_the_second_variant_to_the_first() -> None:
    for cid in CONVERSATIONS[:5000]:
        if assign_variant("ramp", cid, ("v7", "v6"), 0.1) == "v7":
            assert assign_variant("ramp", cid, ("v7", "v6"), 0.5) == "v7"


def test_the_same_conversation_always_gets_the_same_variant() -> None:
    assert len({assign_variant("greeting-2025-06", "conv-77", ["v6", "v7"], 0.4) for _ in range(50)}) == 1


@pytest.mark.parametrize("split", [0.0, 1.0, -0.5, 2.0, math.nan, math.inf, -math.inf])
def test_it_rejects_a_split_outside_zero_to_one(split: float) -> None:
    with pytest.raises(ValueError, match="split"):
        assign_variant("exp", "conv-1", ("a", "b"), split)


@pytest.mark.parametrize(
    ("experiment", "conversation_id", "variants", "error", "match"),
    [
        ("", "conv-1", ("a", "b"), ValueError, "experiment must not be empty"),
        ("exp", "", ("a", "b"), ValueError, "conversation_id must not be empty"),
        ("exp", "conv-1", ("a", "a"), ValueError, "variants must differ"),
        ("exp", "conv-1", ("a", "b", "c"), ValueError, "exactly two"),
        ("exp", "conv-1", "ab", TypeError, "pair of strings"),
        ("exp", None, ("a", "b"), TypeError, "conversation_id must be a string"),
        ("e\x1fx", "conv-1", ("a", "b"), ValueError, "U\\+001F"),
        ("exp", "conv-\udc00", ("a", "b"), ValueError, "valid Unicode"),
    ],
)
def test_it_rejects_bad_arguments_with_a_message_naming_them(
    experiment: Any, conversation_id: Any, variants: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        assign_variant(experiment, conversation_id, variants, 0.5)


def test_it_rejects_a_split_that_is_not_a_number() -> None:
    with pytest.raises(TypeError, match="split must be a number"):
        assign_variant("exp", "conv-1", ("a", "b"), "0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="split must be a number"):
        assign_variant("exp", "conv-1", ("a", "b"), True)


def test_an_experiment_is_checked_when_made_and_assigns_as_the_function_does() -> None:
    greeting = Experiment("greeting-2025-06", ("v6", "v7"), split=0.3)
    for cid in CONVERSATIONS[:500]:
        assert greeting.variant_for(cid) == assign_variant("greeting-2025-06", cid, ("v6", "v7"), 0.3)
    with pytest.raises(ValueError, match="split"):
        Experiment("greeting-2025-06", ("v6", "v7"), split=1.0)
    with pytest.raises(ValueError, match="variants must differ"):
        Experiment("greeting-2025-06", ("v6", "v6"))
    with pytest.raises(ValueError, match="experiment must not be empty"):
        Experiment("", ("v6", "v7"))
