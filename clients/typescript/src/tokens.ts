/**
 * Token counts and the client's own cost figure.
 *
 * The provider's reported usage is the truth; the 4-characters-per-token
 * estimate is only a fallback for when a provider reports nothing.
 */

/** Usage as the common SDKs report it; any one of these shapes is understood. */
export interface ProviderUsage {
  // OpenAI
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
  // Anthropic, Vercel AI SDK 5
  input_tokens?: number;
  output_tokens?: number;
  inputTokens?: number;
  outputTokens?: number;
  totalTokens?: number;
  // Vercel AI SDK 3-4
  promptTokens?: number;
  completionTokens?: number;
  // Gemini (`response.usageMetadata`)
  promptTokenCount?: number;
  candidatesTokenCount?: number;
  totalTokenCount?: number;
}

export interface TokenUsage {
  totalTokens: number;
  systemTokens: number;
  userTokens: number;
  responseTokens: number;
  /** Prompt side (system + conversation) and reply side, as the provider counted them. */
  inputTokens: number;
  outputTokens: number;
  /** True when the counts are the character estimate, not the provider's. */
  estimated: boolean;
}

const CHARS_PER_TOKEN = 4;

function count(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? Math.round(value) : undefined;
}

function estimate(text: string | null | undefined): number {
  return Math.ceil((typeof text === "string" ? text.length : 0) / CHARS_PER_TOKEN);
}

/** The provider's input and output counts, or null when it reported neither. */
export function reportedUsage(usage: ProviderUsage | null | undefined): { input: number; output: number; total: number } | null {
  if (!usage || typeof usage !== "object") return null;
  const input =
    count(usage.input_tokens) ?? count(usage.inputTokens) ?? count(usage.prompt_tokens) ??
    count(usage.promptTokens) ?? count(usage.promptTokenCount);
  const output =
    count(usage.output_tokens) ?? count(usage.outputTokens) ?? count(usage.completion_tokens) ??
    count(usage.completionTokens) ?? count(usage.candidatesTokenCount);
  if (input === undefined && output === undefined) return null;
  const total =
    count(usage.total_tokens) ?? count(usage.totalTokens) ?? count(usage.totalTokenCount) ?? (input ?? 0) + (output ?? 0);
  return { input: input ?? 0, output: output ?? 0, total };
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
  const reported = reportedUsage(usage);
  if (reported) {
    return {
      totalTokens: reported.total,
      systemTokens,
      userTokens,
      responseTokens,
      inputTokens: reported.input,
      outputTokens: reported.output,
      estimated: false,
    };
  }
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

/**
 * The event fields for a token count: the input/output split is sent only
 * when the provider reported it, so the service prices estimates as estimates.
 */
export function tokenFields(tokens: TokenUsage): { tokens_used: number; input_tokens?: number; output_tokens?: number } {
  if (tokens.estimated) return { tokens_used: tokens.totalTokens };
  return { tokens_used: tokens.totalTokens, input_tokens: tokens.inputTokens, output_tokens: tokens.outputTokens };
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
