"""Token counts and the client's own cost figure.

The provider's reported usage is the truth; the 4-characters-per-token
estimate is only a fallback for when a provider reports nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

CHARS_PER_TOKEN = 4
COST_PER_MILLION_TOKENS = 0.1875  # Gemini 1.5 Flash, blended, as the chat app has always estimated

_INPUT_NAMES = ("input_tokens", "inputTokens", "prompt_tokens", "promptTokens", "promptTokenCount", "prompt_token_count")
_OUTPUT_NAMES = (
    "output_tokens", "outputTokens", "completion_tokens", "completionTokens",
    "candidatesTokenCount", "candidates_token_count",
)
_TOTAL_NAMES = ("total_tokens", "totalTokens", "totalTokenCount", "total_token_count")


@dataclass(frozen=True)
class TokenUsage:
    total_tokens: int
    system_tokens: int
    user_tokens: int
    response_tokens: int
    input_tokens: int
    output_tokens: int
    estimated: bool  # True when the counts are the character estimate, not the provider's

    def event_fields(self) -> dict[str, int]:
        """tokens_used, plus the input/output split only when the provider reported it."""
        if self.estimated:
            return {"tokens_used": self.total_tokens}
        return {"tokens_used": self.total_tokens, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


def _count(usage: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            return round(value)
    return None


def reported_usage(usage: Any) -> tuple[int, int, int] | None:
    """(input, output, total) from an OpenAI, Anthropic, Gemini or similar usage object or dict."""
    if usage is None:
        return None
    given_input, given_output = _count(usage, _INPUT_NAMES), _count(usage, _OUTPUT_NAMES)
    if given_input is None and given_output is None:
        return None
    given_input, given_output = given_input or 0, given_output or 0
    total = _count(usage, _TOTAL_NAMES)
    return given_input, given_output, given_input + given_output if total is None else total


def _estimate(text: str | None) -> int:
    return math.ceil(len(text or "") / CHARS_PER_TOKEN)


def calculate_token_usage(system_prompt: str, user_message: str, ai_response: str, usage: Any = None) -> TokenUsage:
    """Tokens of one reply: the provider's counts when `usage` is given, else an estimate.

    The system / user / response parts are always the estimate: providers do
    not report them apart.
    """
    system, user, response = _estimate(system_prompt), _estimate(user_message), _estimate(ai_response)
    reported = reported_usage(usage)
    if reported:
        given_input, given_output, total = reported
        return TokenUsage(total, system, user, response, given_input, given_output, estimated=False)
    return TokenUsage(system + user + response, system, user, response, system + user, response, estimated=True)


def estimate_api_cost(total_tokens: float) -> float:
    """The client's own cost estimate, sent as api_cost_usd; the service's price table decides analytics."""
    if not isinstance(total_tokens, (int, float)) or not math.isfinite(total_tokens) or total_tokens <= 0:
        return 0.0
    return round(total_tokens / 1_000_000 * COST_PER_MILLION_TOKENS, 6)
