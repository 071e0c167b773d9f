"""Token counts and the client's own cost figure.

The provider's reported usage is the truth; the 4-characters-per-token
estimate is only a fallback for when a provider reports nothing.

Every provider's usage object is read into the service's one convention:
`input_tokens` is the whole prompt (fresh + cache read + cache write),
`output_tokens` the whole output (visible + reasoning), and the cache and
reasoning counts are parts of those totals, never added to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

CHARS_PER_TOKEN = 4
COST_PER_MILLION_TOKENS = 0.1875  # Gemini 1.5 Flash, blended, as the chat app has always estimated


@dataclass(frozen=True)
class NormalisedUsage:
    """A provider's report in the event's terms; a part the provider did not report is None, not 0."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cache_read_input_tokens: int | None = None  # part of input_tokens
    cache_write_input_tokens: int | None = None  # part of input_tokens
    reasoning_output_tokens: int | None = None  # part of output_tokens


@dataclass(frozen=True)
class TokenUsage:
    total_tokens: int
    system_tokens: int
    user_tokens: int
    response_tokens: int
    input_tokens: int
    output_tokens: int
    estimated: bool  # True when the counts are the character estimate, not the provider's
    cache_read_input_tokens: int | None = None
    cache_write_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None

    def event_fields(self) -> dict[str, int]:
        """tokens_used, plus the input/output split and the cache and reasoning parts the provider reported."""
        if self.estimated:
            return {"tokens_used": self.total_tokens}
        fields = {
            "tokens_used": self.total_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_write_input_tokens": self.cache_write_input_tokens,
            "reasoning_output_tokens": self.reasoning_output_tokens,
        }
        return {name: value for name, value in fields.items() if value is not None}


def _get(usage: Any, name: str) -> Any:
    # SDKs hand over objects (pydantic models, protos); raw HTTP answers are dicts.
    return usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)


def _count(usage: Any, *names: str) -> int | None:
    if usage is None:
        return None
    for name in names:
        value = _get(usage, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            return round(value)
    return None


def _sum(*counts: int | None) -> int | None:
    known = [count for count in counts if count is not None]
    return sum(known) if known else None


def _normalised(
    given_input: int | None,
    given_output: int | None,
    given_total: int | None,
    cache_read: int | None = None,
    cache_write: int | None = None,
    reasoning: int | None = None,
) -> NormalisedUsage | None:
    if given_input is None and given_output is None:
        return None
    input_tokens, output_tokens = given_input or 0, given_output or 0
    if given_input is None or given_output is None:
        # One side missing: the provider's total is the better figure, as it always was here.
        total = input_tokens + output_tokens if given_total is None else given_total
    else:
        total = input_tokens + output_tokens
    # The documented shapes cannot give a part larger than its total, but some wrappers do (AI SDK 5's
    # Google provider counts thoughts outside outputTokens, its Anthropic provider the cache outside
    # inputTokens). The service refuses such an event whole, so an impossible part is left unknown.
    if (cache_read or 0) + (cache_write or 0) > input_tokens:
        cache_read = cache_write = None
    if (reasoning or 0) > output_tokens:
        reasoning = None
    return NormalisedUsage(input_tokens, output_tokens, total, cache_read, cache_write, reasoning)


def _gemini(usage: Any) -> NormalisedUsage | None:
    # usageMetadata: the prompt count includes the cached content, the candidates count leaves the
    # thoughts out, and tool-use prompts are counted apart (all in totalTokenCount).
    prompt = _count(usage, "promptTokenCount", "prompt_token_count")
    candidates = _count(usage, "candidatesTokenCount", "candidates_token_count")
    if prompt is None and candidates is None:
        return None
    thoughts = _count(usage, "thoughtsTokenCount", "thoughts_token_count")
    return _normalised(
        _sum(prompt, _count(usage, "toolUsePromptTokenCount", "tool_use_prompt_token_count")),
        _sum(candidates, thoughts),
        _count(usage, "totalTokenCount", "total_token_count"),
        cache_read=_count(usage, "cachedContentTokenCount", "cached_content_token_count"),
        reasoning=thoughts,
    )


def _anthropic(usage: Any) -> NormalisedUsage | None:
    # Messages API: input_tokens is only what came after the last cache breakpoint.
    cache_read = _count(usage, "cache_read_input_tokens")
    cache_write = _count(usage, "cache_creation_input_tokens")
    if cache_read is None and cache_write is None:
        return None
    fresh, output = _count(usage, "input_tokens"), _count(usage, "output_tokens")
    if fresh is None and output is None:
        return None
    return _normalised(_sum(fresh, cache_read, cache_write), output, None, cache_read, cache_write)


def _openai(usage: Any, input_name: str, output_name: str) -> NormalisedUsage | None:
    # Chat Completions (prompt_/completion_tokens) and Responses (input_/output_tokens): the totals
    # include the cached and reasoning tokens, which the *_details objects count.
    given_input, given_output = _count(usage, input_name), _count(usage, output_name)
    if given_input is None and given_output is None:
        return None
    return _normalised(
        given_input,
        given_output,
        _count(usage, "total_tokens"),
        cache_read=_count(_get(usage, f"{input_name}_details"), "cached_tokens"),
        reasoning=_count(_get(usage, f"{output_name}_details"), "reasoning_tokens"),
    )


def _ai_sdk(usage: Any) -> NormalisedUsage | None:
    # Vercel AI SDK: 3-4 promptTokens/completionTokens; 5 inputTokens/outputTokens with cachedInputTokens
    # and reasoningTokens inside them; 6 adds inputTokenDetails and outputTokenDetails, preferred here.
    given_input = _count(usage, "inputTokens", "promptTokens")
    given_output = _count(usage, "outputTokens", "completionTokens")
    if given_input is None and given_output is None:
        return None
    input_details, output_details = _get(usage, "inputTokenDetails"), _get(usage, "outputTokenDetails")
    cache_read = _count(input_details, "cacheReadTokens")
    reasoning = _count(output_details, "reasoningTokens")
    return _normalised(
        given_input,
        given_output,
        _count(usage, "totalTokens"),
        cache_read=_count(usage, "cachedInputTokens") if cache_read is None else cache_read,
        cache_write=_count(input_details, "cacheWriteTokens"),
        reasoning=_count(usage, "reasoningTokens") if reasoning is None else reasoning,
    )


def normalise_usage(usage: Any) -> NormalisedUsage | None:
    """The totals and their cache and reasoning parts from a provider's usage object or dict.

    Reads OpenAI Chat Completions and Responses, Anthropic Messages, Gemini
    `usageMetadata` (camelCase or the Python SDK's snake_case) and the Vercel
    AI SDK 3-6. None when the object reports neither input nor output.
    """
    if usage is None:
        return None
    return (
        _gemini(usage)
        or _anthropic(usage)
        or _openai(usage, "input_tokens", "output_tokens")
        or _openai(usage, "prompt_tokens", "completion_tokens")
        or _ai_sdk(usage)
    )


def reported_usage(usage: Any) -> tuple[int, int, int] | None:
    """(input, output, total) from an OpenAI, Anthropic, Gemini or similar usage object or dict."""
    normalised = normalise_usage(usage)
    if normalised is None:
        return None
    return normalised.input_tokens, normalised.output_tokens, normalised.total_tokens


def _estimate(text: str | None) -> int:
    return math.ceil(len(text or "") / CHARS_PER_TOKEN)


def calculate_token_usage(system_prompt: str, user_message: str, ai_response: str, usage: Any = None) -> TokenUsage:
    """Tokens of one reply: the provider's counts when `usage` is given, else an estimate.

    The system / user / response parts are always the estimate: providers do
    not report them apart.
    """
    system, user, response = _estimate(system_prompt), _estimate(user_message), _estimate(ai_response)
    reported = normalise_usage(usage)
    if reported:
        return TokenUsage(
            reported.total_tokens, system, user, response, reported.input_tokens, reported.output_tokens,
            estimated=False,
            cache_read_input_tokens=reported.cache_read_input_tokens,
            cache_write_input_tokens=reported.cache_write_input_tokens,
            reasoning_output_tokens=reported.reasoning_output_tokens,
        )
    return TokenUsage(system + user + response, system, user, response, system + user, response, estimated=True)


def estimate_api_cost(total_tokens: float) -> float:
    """The client's own cost estimate, sent as api_cost_usd; the service's price table decides analytics."""
    if not isinstance(total_tokens, (int, float)) or not math.isfinite(total_tokens) or total_tokens <= 0:
        return 0.0
    return round(total_tokens / 1_000_000 * COST_PER_MILLION_TOKENS, 6)
