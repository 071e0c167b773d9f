"""The service assigns conversations to arms exactly as both clients do: the shared vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metrics_app.experiments.assignment import assign_variant

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "clients" / "variant_assignment_vectors.json").read_text())


@pytest.mark.parametrize("case", VECTORS["vectors"], ids=lambda case: case["note"])
def test_the_service_assigns_each_shared_vector_as_the_clients_do(case):
    variants = tuple(case["variants"])
    assert assign_variant(case["experiment"], case["conversation_id"], variants, case["split"]) == case["variant"]


@pytest.mark.parametrize(("name", "conversation_id", "variants", "split"), [
    ("", "c-1", ("v6", "v7"), 0.5), ("exp", "", ("v6", "v7"), 0.5), ("exp", "c-1", ("v6", "v6"), 0.5),
    ("exp", "c-1", ("v6", "v7"), 0.0), ("exp", "c-1", ("v6", "v7"), 1.0), ("exp", "c-1", ("v6", "v7"), float("nan")),
])
def test_what_the_clients_refuse_for_a_saved_experiment_the_service_refuses_too(name, conversation_id, variants,
                                                                                 split):
    with pytest.raises(ValueError):
        assign_variant(name, conversation_id, variants, split)
