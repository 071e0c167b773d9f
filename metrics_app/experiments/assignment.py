"""Which arm a conversation belongs to: the clients' assignment hash, which the service applies too.

The clients (clients/python, clients/typescript) pick an arm with the same
rule, and clients/variant_assignment_vectors.json holds the cases all three
must agree on. The compare answer counts the conversations whose events
carry the other arm's value than this rule gives, so a chat app that assigns
some other way shows up.

u = the first 8 bytes of SHA-256(name + "\\x1f" + conversation_id), big-endian;
the conversation is in arm a when u < floor(split * 2**53) * 2**11.
"""

from __future__ import annotations

import hashlib
import math

SEPARATOR = "\x1f"


def threshold(split: float) -> int:
    """The 64-bit bound below which a hash falls in arm a: exact in every language that has 53-bit doubles."""
    if not (math.isfinite(split) and 0 < split < 1):
        raise ValueError("split must be strictly between 0 and 1")
    return math.floor(split * 2**53) * 2**11


def assign_variant(experiment: str, conversation_id: str, variants: tuple[str, str], split: float = 0.5) -> str:
    if not experiment or not conversation_id:
        raise ValueError("the experiment name and the conversation id must not be empty")
    if variants[0] == variants[1]:
        raise ValueError("the two variants must differ")
    digest = hashlib.sha256(f"{experiment}{SEPARATOR}{conversation_id}".encode()).digest()
    return variants[0] if int.from_bytes(digest[:8], "big") < threshold(split) else variants[1]
