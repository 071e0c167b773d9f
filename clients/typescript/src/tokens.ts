/**
 * Token counts and the client's own cost figure.
 *
 * The provider's reported usage is the truth; the 4-characters-per-token
 * estimate is only a fallback for when a provider reports nothing.
 *
 * Every provider's usage object is read into the service's one convention:
 * `input_tokens` is the whole prompt (fresh + cache read + cache write),
 * `output_tokens` the whole output (visible + reasoning), and the cache and
 * reasoning counts are parts of those totals, never added to them.
 */

/**
 * Usage as the common SDKs report it; any one of these shapes is understood.
 * Counts may be null where an SDK types them so (Anthropic's cache fields).
 */
export interface ProviderUsage {
  // OpenAI Chat Completions; the details are parts of the totals
  prompt_tokens?: number | null;
  completion_tokens?: number | null;
  total_tokens?: number | null;
  prompt_tokens_details?: { cached_tokens?: number | null } | null;
  completion_tokens_details?: { reasoning_tokens?: number | null } | null;
  // OpenAI Responses (same meaning as above) and Anthropic Messages, whose
  // input_tokens leaves out the two cache counts
  input_tokens?: number | null;
  output_tokens?: number | null;
  input_tokens_details?: { cached_tokens?: number | null } | null;
  output_tokens_details?: { reasoning_tokens?: number | null } | null;
  cache_read_input_tokens?: number | null;
  cache_creation_input_tokens?: number | null;
  // Vercel AI SDK 5-6; cachedInputTokens and reasoningTokens are parts of the totals
  inputTokens?: number | null;
  outputTokens?: number | null;
  totalTokens?: number | null;
  cachedInputTokens?: number | null;
  reasoningTokens?: number | null;
  // Vercel AI SDK 6
  inputTokenDetails?: { noCacheTokens?: number | null; cacheReadTokens?: number | null; cacheWriteTokens?: number | null } | null;
  outputTokenDetails?: { textTokens?: number | null; reasoningTokens?: number | null } | null;
  // Vercel AI SDK 3-4
  promptTokens?: number | null;
  completionTokens?: number | null;
  // Gemini (`response.usageMetadata`); the prompt count includes the cached
  // content but not the tool-use prompt, the candidates count leaves out the thoughts
  promptTokenCount?: number | null;
  candidatesTokenCount?: number | null;
  totalTokenCount?: number | null;
  cachedContentTokenCount?: number | null;
  thoughtsTokenCount?: number | null;
  toolUsePromptTokenCount?: number | null;
}

/**
 * A provider's report in the event's terms: `inputTokens` is the whole prompt
 * (fresh + cache read + cache write), `outputTokens` the whole output (visible
 * + reasoning). The parts are left out when the provider did not report them.
 */
export interface NormalisedUsage {
  inputTokens: number;
  outputTokens: number;
  totalTokens: number;
  /** Part of inputTokens: served from the provider's prompt cache. */
  cacheReadInputTokens?: number;
  /** Part of inputTokens: written to the provider's prompt cache. */
  cacheWriteInputTokens?: number;
  /** Part of outputTokens: reasoning ("thinking") tokens. */
  reasoningOutputTokens?: number;
}

export interface TokenUsage {
  totalTokens: number;
  systemTokens: number;
  userTokens: number;
  responseTokens: number;
  /** Prompt side (system + conversation) and reply side, as the provider counted them. */
  inputTokens: number;
  outputTokens: number;
  /** Parts of inputTokens and outputTokens, when the provider reported them. */
  cacheReadInputTokens?: number;
  cacheWriteInputTokens?: number;
  reasoningOutputTokens?: number;
  /** True when the counts are the character estimate, not the provider's. */
  estimated: boolean;
}

const CHARS_PER_TOKEN = 4;

function count(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? Math.round(value) : undefined;
}

function sum(...counts: Array<number | undefined>): number | undefined {
  const known = counts.filter((value): value is number => value !== undefined);
  return known.length > 0 ? known.reduce((a, b) => a + b, 0) : undefined;
}

interface Counts {
  input: number | undefined;
  output: number | undefined;
  total: number | undefined;
  cacheRead?: number | undefined;
  cacheWrite?: number | undefined;
  reasoning?: number | undefined;
}

function normalised(counts: Counts): NormalisedUsage | null {
  if (counts.input === undefined && counts.output === undefined) return null;
  const inputTokens = counts.input ?? 0;
  const outputTokens = counts.output ?? 0;
  // One side missing: the provider's total is the better figure, as it always was here.
  const oneSide = counts.input === undefined || counts.output === undefined;
  const totalTokens = oneSide ? (counts.total ?? inputTokens + outputTokens) : inputTokens + outputTokens;
  const usage: NormalisedUsage = { inputTokens, outputTokens, totalTokens };
  // The documented shapes cannot give a part larger than its total, but some
  // wrappers do (AI SDK 5's Google provider counts thoughts outside
  // outputTokens, its Anthropic provider the cache outside inputTokens). The
  // service refuses such an event whole, so an impossible part is left unknown.
  if ((counts.cacheRead ?? 0) + (counts.cacheWrite ?? 0) <= inputTokens) {
    if (counts.cacheRead !== undefined) usage.cacheReadInputTokens = counts.cacheRead;
    if (counts.cacheWrite !== undefined) usage.cacheWriteInputTokens = counts.cacheWrite;
  }
  if (counts.reasoning !== undefined && counts.reasoning <= outputTokens) usage.reasoningOutputTokens = counts.reasoning;
  return usage;
}

function gemini(usage: ProviderUsage): NormalisedUsage | null {
  const prompt = count(usage.promptTokenCount);
  const candidates = count(usage.candidatesTokenCount);
  if (prompt === undefined && candidates === undefined) return null;
  const thoughts = count(usage.thoughtsTokenCount);
  return normalised({
    input: sum(prompt, count(usage.toolUsePromptTokenCount)),
    output: sum(candidates, thoughts),
    total: count(usage.totalTokenCount),
    cacheRead: count(usage.cachedContentTokenCount),
    reasoning: thoughts,
  });
}

function anthropic(usage: ProviderUsage): NormalisedUsage | null {
  // input_tokens is only what came after the last cache breakpoint.
  const cacheRead = count(usage.cache_read_input_tokens);
  const cacheWrite = count(usage.cache_creation_input_tokens);
  if (cacheRead === undefined && cacheWrite === undefined) return null;
  const fresh = count(usage.input_tokens);
  const output = count(usage.output_tokens);
  if (fresh === undefined && output === undefined) return null;
  return normalised({ input: sum(fresh, cacheRead, cacheWrite), output, total: undefined, cacheRead, cacheWrite });
}

function openaiResponses(usage: ProviderUsage): NormalisedUsage | null {
  return normalised({
    input: count(usage.input_tokens),
    output: count(usage.output_tokens),
    total: count(usage.total_tokens),
    cacheRead: count(usage.input_tokens_details?.cached_tokens),
    reasoning: count(usage.output_tokens_details?.reasoning_tokens),
  });
}

function openaiChat(usage: ProviderUsage): NormalisedUsage | null {
  return normalised({
    input: count(usage.prompt_tokens),
    output: count(usage.completion_tokens),
    total: count(usage.total_tokens),
    cacheRead: count(usage.prompt_tokens_details?.cached_tokens),
    reasoning: count(usage.completion_tokens_details?.reasoning_tokens),
  });
}

function aiSdk(usage: ProviderUsage): NormalisedUsage | null {
  // Version 6's details are preferred over the flat counts it keeps from version 5.
  return normalised({
    input: count(usage.inputTokens) ?? count(usage.promptTokens),
    output: count(usage.outputTokens) ?? count(usage.completionTokens),
    total: count(usage.totalTokens),
    cacheRead: count(usage.inputTokenDetails?.cacheReadTokens) ?? count(usage.cachedInputTokens),
    cacheWrite: count(usage.inputTokenDetails?.cacheWriteTokens),
    reasoning: count(usage.outputTokenDetails?.reasoningTokens) ?? count(usage.reasoningTokens),
  });
}

/**
 * The totals and their cache and reasoning parts from a provider's usage
 * object: OpenAI Chat Completions and Responses, Anthropic Messages, Gemini
 * `usageMetadata` and the Vercel AI SDK 3-6. Null when it reports neither
 * input nor output.
 */
export function normaliseUsage(usage: ProviderUsage | null | undefined): NormalisedUsage | null {
  if (!usage || typeof usage !== "object") return null;
  return gemini(usage) ?? anthropic(usage) ?? openaiResponses(usage) ?? openaiChat(usage) ?? aiSdk(usage);
}

function estimate(text: string | null | undefined): number {
  return Math.ceil((typeof text === "string" ? text.length : 0) / CHARS_PER_TOKEN);
}

/** The provider's input and output counts, or null when it reported neither. */
export function reportedUsage(usage: ProviderUsage | null | undefined): { input: number; output: number; total: number } | null {
  const normalisedUsage = normaliseUsage(usage);
  if (!normalisedUsage) return null;
  return { input: normalisedUsage.inputTokens, output: normalisedUsage.outputTokens, total: normalisedUsage.totalTokens };
}

/**
 * How many tokens a reply used. With `usage` (the provider's report) the
 * input, output and total are the provider's; without it they are estimated
 * from the text lengths at about 4 characters per token. The system / user /
 * response parts are always the estimate: providers do not report them apart.
 */
export function calculateTokenUsage(
  systemPrompt: string,
  userMessage: string,
  aiResponse: string,
  usage?: ProviderUsage | null,
): TokenUsage {
  const systemTokens = estimate(systemPrompt);
  const userTokens = estimate(userMessage);
  const responseTokens = estimate(aiResponse);
  const reported = normaliseUsage(usage);
  if (reported) return { ...reported, systemTokens, userTokens, responseTokens, estimated: false };
  return {
    totalTokens: systemTokens + userTokens + responseTokens,
    systemTokens,
    userTokens,
    responseTokens,
    inputTokens: systemTokens + userTokens,
    outputTokens: responseTokens,
    estimated: true,
  };
}

/** The token fields of an event, as `tokenFields` makes them. */
export interface TokenFields {
  tokens_used: number;
  input_tokens?: number;
  output_tokens?: number;
  cache_read_input_tokens?: number;
  cache_write_input_tokens?: number;
  reasoning_output_tokens?: number;
}

/**
 * The event fields for a token count: the input/output split, and the cache
 * and reasoning parts the provider reported, are sent only when the provider
 * reported the counts, so the service prices estimates as estimates.
 */
export function tokenFields(tokens: TokenUsage): TokenFields {
  if (tokens.estimated) return { tokens_used: tokens.totalTokens };
  const fields: TokenFields = {
    tokens_used: tokens.totalTokens,
    input_tokens: tokens.inputTokens,
    output_tokens: tokens.outputTokens,
  };
  if (tokens.cacheReadInputTokens !== undefined) fields.cache_read_input_tokens = tokens.cacheReadInputTokens;
  if (tokens.cacheWriteInputTokens !== undefined) fields.cache_write_input_tokens = tokens.cacheWriteInputTokens;
  if (tokens.reasoningOutputTokens !== undefined) fields.reasoning_output_tokens = tokens.reasoningOutputTokens;
  return fields;
}

/**
 * The client's own cost estimate (Gemini 1.5 Flash's blended $0.1875 per
 * million tokens), sent as `api_cost_usd`. Analytics use the service's price
 * table for the model when it has one; this figure is kept beside it.
 */
export function estimateApiCost(totalTokens: number): number {
  const COST_PER_MILLION_TOKENS = 0.1875;
  if (!Number.isFinite(totalTokens) || totalTokens <= 0) return 0;
  const costUsd = (totalTokens / 1_000_000) * COST_PER_MILLION_TOKENS;
  return Math.round(costUsd * 1_000_000) / 1_000_000;
}
