"""Reading each provider's usage object into the event's token fields.

The examples are the providers' own shapes, with figures that add up the way
their documentation says they do.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlops_tracking import calculate_token_usage, normalise_usage, reported_usage  # noqa: E402

OPENAI_CHAT = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 192, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
    },
}
OPENAI_RESPONSES = {
    "input_tokens": 1836,
    "input_tokens_details": {"cached_tokens": 1536},
    "output_tokens": 820,
    "output_tokens_details": {"reasoning_tokens": 704},
    "total_tokens": 2656,
}
ANTHROPIC = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 1104,
    "cache_read_input_tokens": 2890,
    "cache_creation": {"ephemeral_5m_input_tokens": 1104, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 356,
    "server_tool_use": None,
    "service_tier": "standard",
}
GEMINI = {
    "promptTokenCount": 3120,
    "cachedContentTokenCount": 2048,
    "candidatesTokenCount": 210,
    "thoughtsTokenCount": 980,
    "totalTokenCount": 4310,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 3120}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 2048}],
}
AI_SDK_5 = {
    "inputTokens": 2006, "outputTokens": 300, "totalTokens": 2306, "reasoningTokens": 192, "cachedInputTokens": 1920,
}
AI_SDK_6 = {
    "inputTokens": 4006,
    "inputTokenDetails": {"noCacheTokens": 12, "cacheReadTokens": 2890, "cacheWriteTokens": 1104},
    "outputTokens": 356,
    "outputTokenDetails": {"textTokens": 356, "reasoningTokens": None},
    "totalTokens": 4362,
    "cachedInputTokens": 2890,
}

SENT = {
    "openai chat": (OPENAI_CHAT, {
        "tokens_used": 2306, "input_tokens": 2006, "output_tokens": 300,
        "cache_read_input_tokens": 1920, "reasoning_output_tokens": 192,
    }),
    "openai responses": (OPENAI_RESPONSES, {
        "tokens_used": 2656, "input_tokens": 1836, "output_tokens": 820,
        "cache_read_input_tokens": 1536, "reasoning_output_tokens": 704,
    }),
    "anthropic": (ANTHROPIC, {
        "tokens_used": 4362, "input_tokens": 4006, "output_tokens": 356,
        "cache_read_input_tokens": 2890, "cache_write_input_tokens": 1104,
    }),
    "gemini": (GEMINI, {
        "tokens_used": 4310, "input_tokens": 3120, "output_tokens": 1190,
        "cache_read_input_tokens": 2048, "reasoning_output_tokens": 980,
    }),
    "ai sdk 5": (AI_SDK_5, {
        "tokens_used": 2306, "input_tokens": 2006, "output_tokens": 300,
        "cache_read_input_tokens": 1920, "reasoning_output_tokens": 192,
    }),
    "ai sdk 6": (AI_SDK_6, {
        "tokens_used": 4362, "input_tokens": 4006, "output_tokens": 356,
        "cache_read_input_tokens": 2890, "cache_write_input_tokens": 1104,
    }),
}


def sent(usage: Any) -> dict[str, int]:
    return calculate_token_usage("system", "hello", "hi there", usage).event_fields()


@pytest.mark.parametrize(("usage", "fields"), SENT.values(), ids=SENT.keys())
def test_each_providers_usage_is_sent_as_whole_totals_with_their_cache_and_reasoning_parts(usage, fields):
    assert sent(usage) == fields


@pytest.mark.parametrize("usage", [usage for usage, _ in SENT.values()], ids=SENT.keys())
def test_no_part_is_larger_than_its_total_and_the_totals_add_up(usage):
    fields = sent(usage)
    cache = fields.get("cache_read_input_tokens", 0) + fields.get("cache_write_input_tokens", 0)
    assert cache <= fields["input_tokens"]
    assert fields.get("reasoning_output_tokens", 0) <= fields["output_tokens"]
    assert fields["tokens_used"] == fields["input_tokens"] + fields["output_tokens"]


def test_sdk_objects_are_read_like_the_json_they_come_from():
    # openai.types.CompletionUsage, anthropic.types.Usage and google.genai's usage_metadata are objects;
    # the Python Gemini SDK names its counts in snake_case and leaves unreported ones None.
    openai = SimpleNamespace(
        prompt_tokens=2006, completion_tokens=300, total_tokens=2306,
        prompt_tokens_details=SimpleNamespace(cached_tokens=1920), completion_tokens_details=None,
    )
    assert sent(openai) == {
        "tokens_used": 2306, "input_tokens": 2006, "output_tokens": 300, "cache_read_input_tokens": 1920,
    }
    anthropic = SimpleNamespace(
        input_tokens=20, output_tokens=5, cache_read_input_tokens=None, cache_creation_input_tokens=None,
    )
    assert sent(anthropic) == {"tokens_used": 25, "input_tokens": 20, "output_tokens": 5}
    gemini = SimpleNamespace(
        prompt_token_count=3120, cached_content_token_count=2048, candidates_token_count=210,
        thoughts_token_count=980, tool_use_prompt_token_count=None, total_token_count=4310,
    )
    assert sent(gemini) == SENT["gemini"][1]


def test_parts_the_provider_did_not_report_are_left_out_not_sent_as_zero():
    assert sent({"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}) == {
        "tokens_used": 37, "input_tokens": 30, "output_tokens": 7,
    }
    assert sent({"promptTokens": 30, "completionTokens": 7, "totalTokens": 37}) == {  # AI SDK 3-4
        "tokens_used": 37, "input_tokens": 30, "output_tokens": 7,
    }
    # A reported zero is a count like any other.
    assert sent({**ANTHROPIC, "cache_creation_input_tokens": 0})["cache_write_input_tokens"] == 0


def test_anthropic_input_tokens_is_only_the_fresh_part_when_the_cache_is_reported():
    usage = normalise_usage({"input_tokens": 50, "cache_read_input_tokens": 1000, "output_tokens": 10})
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_write_input_tokens) == (1050, 1000, None)
    # Without the cache fields the same names mean the whole prompt, as in OpenAI's Responses API.
    assert reported_usage({"input_tokens": 50, "output_tokens": 10}) == (50, 10, 60)


def test_gemini_output_counts_the_thoughts_and_input_the_tool_use_prompt():
    usage = normalise_usage({
        "promptTokenCount": 400, "toolUsePromptTokenCount": 150, "candidatesTokenCount": 60,
        "thoughtsTokenCount": 90, "totalTokenCount": 700,
    })
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (550, 150, 700)
    assert (usage.reasoning_output_tokens, usage.cache_read_input_tokens) == (90, None)


def test_ai_sdk_6_details_win_over_the_deprecated_flat_counts():
    usage = normalise_usage({**AI_SDK_6, "cachedInputTokens": 1, "reasoningTokens": 3,
                             "outputTokenDetails": {"textTokens": 300, "reasoningTokens": 56}})
    assert (usage.cache_read_input_tokens, usage.reasoning_output_tokens) == (2890, 56)


def test_a_part_that_its_total_cannot_hold_is_left_unknown_rather_than_refused_by_the_service():
    # AI SDK 5's Google provider puts the thoughts beside outputTokens, not inside it.
    usage = normalise_usage({"inputTokens": 3120, "outputTokens": 210, "totalTokens": 4310,
                             "reasoningTokens": 980, "cachedInputTokens": 2048})
    assert (usage.output_tokens, usage.reasoning_output_tokens, usage.cache_read_input_tokens) == (210, None, 2048)
    # AI SDK 5's Anthropic provider leaves the cache read outside inputTokens.
    usage = normalise_usage({"inputTokens": 12, "outputTokens": 356, "cachedInputTokens": 2890})
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (12, None)


def test_estimates_send_no_split_and_no_parts():
    assert calculate_token_usage("s" * 40, "u" * 8, "r" * 9).event_fields() == {"tokens_used": 15}
    assert normalise_usage(None) is None
    assert normalise_usage({"prompt_tokens_details": {"cached_tokens": 5}}) is None
