// Reading each provider's usage object into the event's token fields. The
// examples are the providers' own shapes, with figures that add up the way
// their documentation says they do.

import assert from "node:assert/strict";
import { test } from "node:test";

import { calculateTokenUsage, normaliseUsage, reportedUsage, tokenFields, type ProviderUsage } from "mlops-chat-tracking";

const openaiChat: ProviderUsage = {
  prompt_tokens: 2006,
  completion_tokens: 300,
  total_tokens: 2306,
  prompt_tokens_details: { cached_tokens: 1920 },
  completion_tokens_details: { reasoning_tokens: 192 },
};
const openaiResponses: ProviderUsage = {
  input_tokens: 1836,
  input_tokens_details: { cached_tokens: 1536 },
  output_tokens: 820,
  output_tokens_details: { reasoning_tokens: 704 },
  total_tokens: 2656,
};
const anthropic: ProviderUsage = {
  input_tokens: 12,
  cache_creation_input_tokens: 1104,
  cache_read_input_tokens: 2890,
  output_tokens: 356,
};
const gemini: ProviderUsage = {
  promptTokenCount: 3120,
  cachedContentTokenCount: 2048,
  candidatesTokenCount: 210,
  thoughtsTokenCount: 980,
  totalTokenCount: 4310,
};
const aiSdk5: ProviderUsage = { inputTokens: 2006, outputTokens: 300, totalTokens: 2306, reasoningTokens: 192, cachedInputTokens: 1920 };
// What the AI SDK 6 reports for an Anthropic reply: no separate reasoning count.
const aiSdk6: ProviderUsage = {
  inputTokens: 4006,
  inputTokenDetails: { noCacheTokens: 12, cacheReadTokens: 2890, cacheWriteTokens: 1104 },
  outputTokens: 356,
  outputTokenDetails: { textTokens: undefined, reasoningTokens: undefined },
  totalTokens: 4362,
  cachedInputTokens: 2890,
};

// The wider objects the SDKs hand over carry more than ProviderUsage names.
const withExtras = (usage: ProviderUsage, extras: Record<string, unknown>): ProviderUsage => ({ ...usage, ...extras });

const sent: Array<[string, ProviderUsage, Record<string, number>]> = [
  [
    "OpenAI Chat Completions",
    withExtras(openaiChat, {
      prompt_tokens_details: { cached_tokens: 1920, audio_tokens: 0 },
      completion_tokens_details: { reasoning_tokens: 192, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
    }),
    { tokens_used: 2306, input_tokens: 2006, output_tokens: 300, cache_read_input_tokens: 1920, reasoning_output_tokens: 192 },
  ],
  [
    "OpenAI Responses",
    openaiResponses,
    { tokens_used: 2656, input_tokens: 1836, output_tokens: 820, cache_read_input_tokens: 1536, reasoning_output_tokens: 704 },
  ],
  [
    "Anthropic Messages",
    withExtras(anthropic, {
      cache_creation: { ephemeral_5m_input_tokens: 1104, ephemeral_1h_input_tokens: 0 },
      server_tool_use: null,
      service_tier: "standard",
    }),
    { tokens_used: 4362, input_tokens: 4006, output_tokens: 356, cache_read_input_tokens: 2890, cache_write_input_tokens: 1104 },
  ],
  [
    "Gemini usageMetadata",
    withExtras(gemini, {
      promptTokensDetails: [{ modality: "TEXT", tokenCount: 3120 }],
      cacheTokensDetails: [{ modality: "TEXT", tokenCount: 2048 }],
    }),
    { tokens_used: 4310, input_tokens: 3120, output_tokens: 1190, cache_read_input_tokens: 2048, reasoning_output_tokens: 980 },
  ],
  [
    "Vercel AI SDK 5",
    aiSdk5,
    { tokens_used: 2306, input_tokens: 2006, output_tokens: 300, cache_read_input_tokens: 1920, reasoning_output_tokens: 192 },
  ],
  [
    "Vercel AI SDK 6",
    withExtras(aiSdk6, { raw: { input_tokens: 12 } }),
    { tokens_used: 4362, input_tokens: 4006, output_tokens: 356, cache_read_input_tokens: 2890, cache_write_input_tokens: 1104 },
  ],
];

function fieldsOf(usage: ProviderUsage): Record<string, number | undefined> {
  return { ...tokenFields(calculateTokenUsage("system", "hello", "hi there", usage)) };
}

for (const [provider, usage, fields] of sent) {
  test(`${provider} usage is sent as whole totals with its cache and reasoning parts`, () => {
    assert.deepEqual(fieldsOf(usage), fields);
  });

  test(`${provider} usage gives no part larger than its total, and the totals add up`, () => {
    const got = fieldsOf(usage);
    const cache = (got.cache_read_input_tokens ?? 0) + (got.cache_write_input_tokens ?? 0);
    assert.ok(cache <= got.input_tokens!, `${cache} cached of ${got.input_tokens} input`);
    assert.ok((got.reasoning_output_tokens ?? 0) <= got.output_tokens!);
    assert.equal(got.tokens_used, got.input_tokens! + got.output_tokens!);
  });
}

test("parts the provider did not report are left out, not sent as zero", () => {
  assert.deepEqual(fieldsOf({ prompt_tokens: 30, completion_tokens: 7, total_tokens: 37 }), {
    tokens_used: 37,
    input_tokens: 30,
    output_tokens: 7,
  });
  assert.deepEqual(fieldsOf({ promptTokens: 30, completionTokens: 7, totalTokens: 37 }), {
    tokens_used: 37,
    input_tokens: 30,
    output_tokens: 7,
  });
  // A reported zero is a count like any other.
  assert.equal(fieldsOf({ ...anthropic, cache_creation_input_tokens: 0 }).cache_write_input_tokens, 0);
});

test("Anthropic's input_tokens is only the fresh part when the cache is reported", () => {
  assert.deepEqual(normaliseUsage({ input_tokens: 50, cache_read_input_tokens: 1000, cache_creation_input_tokens: null, output_tokens: 10 }), {
    inputTokens: 1050,
    outputTokens: 10,
    totalTokens: 1060,
    cacheReadInputTokens: 1000,
  });
  // Without the cache fields the same names mean the whole prompt, as in OpenAI's Responses API.
  assert.deepEqual(reportedUsage({ input_tokens: 50, output_tokens: 10 }), { input: 50, output: 10, total: 60 });
});

test("Gemini's output counts the thoughts and its input the tool-use prompt", () => {
  assert.deepEqual(
    normaliseUsage({ promptTokenCount: 400, toolUsePromptTokenCount: 150, candidatesTokenCount: 60, thoughtsTokenCount: 90, totalTokenCount: 700 }),
    { inputTokens: 550, outputTokens: 150, totalTokens: 700, reasoningOutputTokens: 90 },
  );
});

test("AI SDK 6 details win over the flat counts kept from version 5", () => {
  const usage = normaliseUsage({
    ...aiSdk6,
    cachedInputTokens: 1,
    reasoningTokens: 3,
    outputTokenDetails: { textTokens: 300, reasoningTokens: 56 },
  });
  assert.deepEqual([usage?.cacheReadInputTokens, usage?.reasoningOutputTokens], [2890, 56]);
});

test("a part that its total cannot hold is left unknown rather than refused by the service", () => {
  // AI SDK 5's Google provider puts the thoughts beside outputTokens, not inside it.
  assert.deepEqual(normaliseUsage({ inputTokens: 3120, outputTokens: 210, totalTokens: 4310, reasoningTokens: 980, cachedInputTokens: 2048 }), {
    inputTokens: 3120,
    outputTokens: 210,
    totalTokens: 3330,
    cacheReadInputTokens: 2048,
  });
  // AI SDK 5's Anthropic provider leaves the cache read outside inputTokens.
  assert.deepEqual(normaliseUsage({ inputTokens: 12, outputTokens: 356, cachedInputTokens: 2890 }), {
    inputTokens: 12,
    outputTokens: 356,
    totalTokens: 368,
  });
});

test("estimates send no split and no parts", () => {
  assert.deepEqual(tokenFields(calculateTokenUsage("s".repeat(40), "u".repeat(8), "r".repeat(9))), { tokens_used: 15 });
  assert.equal(normaliseUsage(null), null);
  assert.equal(normaliseUsage({ prompt_tokens_details: { cached_tokens: 5 } }), null);
});
