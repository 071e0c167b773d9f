"""Which arm of an A/B experiment a conversation is in, from its conversation_id alone.

The rule, the same in the TypeScript client and in the service (which checks
the observed split with it):

    u64       = first 8 bytes of SHA-256(UTF-8(experiment + "\\x1f" + conversation_id)), big-endian
    threshold = floor(split * 2**53) * 2**11
    variant   = variants[0] if u64 < threshold else variants[1]

`split` is the planned share of the first variant. Multiplying a float by a
power of two is exact, and every 0 < split < 1 times 2**53 is below 2**53, so
the threshold is the same integer in every language that has IEEE doubles;
the split is honoured to 2**-53. ../variant_assignment_vectors.json holds the
vectors that every implementation checks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

SEPARATOR = "\x1f"  # the ASCII unit separator: not in an experiment's name, so name + id splits one way only


def assign_variant(experiment: str, conversation_id: str, variants: Sequence[str], split: float = 0.5) -> str:
    """The variant this conversation gets in this experiment: always the same for the same four arguments.

    `variants` is the pair (a, b) and `split` the share of conversations that
    get a, 0 < split < 1. The arm goes by position: listing the variants the
    other way round gives every conversation the other one. Raising the split
    only moves conversations from b to a. Another experiment's name gives an
    assignment independent of this one's.

    Raises TypeError for arguments of the wrong type and ValueError for an
    empty name or id, a name containing U+001F, a string that is not valid
    Unicode (a lone surrogate), two equal or empty variants, or a split
    outside (0, 1).
    """
    first, second = _checked_variants(variants)
    threshold = _threshold(split)
    message = _checked_name(experiment) + SEPARATOR + _text("conversation_id", conversation_id)
    try:
        data = message.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"experiment and conversation_id must be valid Unicode text: {error.reason}") from None
    u64 = int.from_bytes(hashlib.sha256(data).digest()[:8], "big")
    return first if u64 < threshold else second


@dataclass(frozen=True)
class Experiment:
    """An experiment as the chat app configures it: checked once, when it is made.

        GREETING = Experiment("greeting-2025-06", ("v6", "v7"), split=0.5)
        prompt_version = GREETING.variant_for(conversation_id)
    """

    name: str
    variants: tuple[str, str]
    split: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", _checked_variants(self.variants))
        _checked_name(self.name)
        _threshold(self.split)

    def variant_for(self, conversation_id: str) -> str:
        return assign_variant(self.name, conversation_id, self.variants, self.split)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    return value


def _checked_name(experiment: object) -> str:
    name = _text("experiment", experiment)
    if SEPARATOR in name:
        raise ValueError("experiment: the name must not contain U+001F, the separator from the conversation_id")
    return name


def _checked_variants(variants: object) -> tuple[str, str]:
    # A str is a Sequence[str] too: "ab" must not become ("a", "b").
    if isinstance(variants, (str, bytes)) or not isinstance(variants, Sequence):
        raise TypeError(f"variants must be a pair of strings, not {type(variants).__name__}")
    if len(variants) != 2:
        raise ValueError(f"variants must be exactly two, got {len(variants)}")
    first, second = (_text("variants", variant) for variant in variants)
    if first == second:
        raise ValueError(f"variants must differ, both are {first!r}")
    return first, second


def _threshold(split: object) -> int:
    if isinstance(split, bool) or not isinstance(split, (int, float)):
        raise TypeError(f"split must be a number, not {type(split).__name__}")
    if not (math.isfinite(split) and 0 < split < 1):
        raise ValueError(f"split must be between 0 and 1 (the share of the first variant), got {split!r}")
    return math.floor(float(split) * 2**53) << 11
