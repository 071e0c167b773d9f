/**
 * The background sender: a bounded in-memory queue drained in batches to
 * `POST /track/batch`, with safe retries (every event carries its own
 * `event_id`, so the service stores a retried event once).
 *
 * Contract: `track()` returns at once and never throws; nothing here ever
 * rejects a promise the caller awaits. Failures are counted in `stats()` and
 * logged, never raised into the chat path.
 */

export interface MetricsData {
  business_id: string;
  conversation_id?: string | null;
  session_id?: string | null;

  // Performance
  response_time_ms: number;
  success_rate?: number | null;

  // AI usage; `api_cost_usd` is the caller's own figure, kept beside the
  // service's price-table cost.
  tokens_used: number;
  input_tokens?: number | null;
  output_tokens?: number | null;
  // Parts of input_tokens (served from / written to the prompt cache) and of
  // output_tokens (reasoning); the service refuses parts larger than their total.
  cache_read_input_tokens?: number | null;
  cache_write_input_tokens?: number | null;
  reasoning_output_tokens?: number | null;
  api_cost_usd?: number | null;
  model_name?: string | null;

  // Business outcome
  intent_detected?: string | null;
  appointment_requested?: boolean | null;
  appointment_booked?: boolean | null;
  human_handoff_requested?: boolean | null;

  // Message sizes
  user_message_length?: number | null;
  ai_response_length?: number | null;
  response_type?: string | null;

  // The customer's mood: a score of the caller's own (-1 very negative .. +1 very positive), or the
  // customer's message for the service to score. The service keeps only the score and drops the text;
  // with both, the caller's score wins. The AI's reply is never sent.
  user_sentiment?: number | null;
  user_message?: string | null;

  // Which prompt and knowledge-base version produced the reply. Left out, kb_version is
  // filled with the business's own version (TrackerOptions.kbVersion).
  prompt_version?: string | null;
  kb_version?: string | null;

  // Set by the client when absent: a UUID reused on every retry, and the reply time.
  event_id?: string;
  timestamp?: string | Date;
}

export interface Logger {
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
}

export interface TrackerOptions {
  /** Base URL of the service; default `MLOPS_SERVICE_URL`, then http://localhost:5000. */
  serviceUrl?: string;
  /** Ingest API key sent as `Authorization: Bearer`; default `MLOPS_API_KEY`. */
  apiKey?: string;
  /** Events per request (the service takes at most 500). Default 100. */
  batchSize?: number;
  /** How long an event may wait for a batch to fill. Default 1000 ms. */
  flushIntervalMs?: number;
  /** Events kept while the service is away (plus the batch in flight); past it the oldest are dropped. Default 10000. */
  maxQueueSize?: number;
  /** Abort one request after this long (then retry). Default 5000 ms. */
  requestTimeoutMs?: number;
  /** First retry delay; doubles per failure, with full jitter. Default 500 ms. */
  initialBackoffMs?: number;
  /** Longest wait between retries of our own; a `Retry-After` is honoured up to 5 minutes. Default 30000 ms. */
  maxBackoffMs?: number;
  /** Longest a shutdown flush may take. Default 5000 ms. */
  shutdownTimeoutMs?: number;
  /** Console by default; `null` for silence. */
  logger?: Logger | null;
  /**
   * Fill a missing `kb_version` with the business's own knowledge-base version,
   * read from `GET /api/knowledge-base/?business_id=...` and kept for
   * `kbVersionTtlMs`. Needs a key with the read scope (or none, against a
   * development service); without one the events go without it. Default true.
   */
  kbVersion?: boolean;
  /** How long a business's knowledge-base version is kept before it is read again. Default 60000 ms. */
  kbVersionTtlMs?: number;
  /** The fetch to use (tests inject one). */
  fetch?: typeof fetch;
}

export interface TrackerStats {
  /** Waiting in the queue or in the request being sent. */
  pending: number;
  /** Stored by the service for the first time. */
  created: number;
  /** Already stored (a retry of a request whose answer was lost). */
  duplicates: number;
  /** Refused by the service's validation: fixing the caller is the only cure. */
  rejected: number;
  /** Lost to a 4xx that retrying cannot fix (bad key, wrong business, too large). */
  refused: number;
  /** Dropped, oldest first, because the queue was full while the service was away. */
  dropped: number;
  /** Still queued when a shutdown flush gave up. */
  abandoned: number;
  /** Requests that failed and were tried again. */
  retries: number;
  lastError: string | null;
}

export interface FlushResult {
  /** True when everything queued before the deadline was answered by the service. */
  complete: boolean;
  pending: number;
}

interface Entry {
  id: string;
  json: string;
  bytes: number;
  /** The business whose kb_version the event still needs, filled when it is sent. */
  kbFor?: string;
}

interface KbVersion {
  version: string | null;
  readAt: number;
}

type Outcome = { kind: "done" } | { kind: "retry"; waitMs: number } | { kind: "drop" };

// The service refuses bodies over 1 MiB; stay clear of it with room for the wrapper.
const MAX_BODY_BYTES = 1024 * 1024 - 1024;
const MAX_BATCH = 500;
const MAX_RETRY_AFTER_MS = 5 * 60 * 1000;
// Room kept in a batch for a kb_version filled at send time; versions are "kb-" and 12 hex digits.
const KB_FIELD_BYTES = 64;
const MAX_KB_VERSION_LENGTH = 40;
const WHOLE_NUMBER_FIELDS = [
  "response_time_ms",
  "tokens_used",
  "input_tokens",
  "output_tokens",
  "cache_read_input_tokens",
  "cache_write_input_tokens",
  "reasoning_output_tokens",
  "user_message_length",
  "ai_response_length",
] as const;
// The service takes a user_message of at most this many characters (it scores the opening): a longer one
// is cut rather than the event refused.
const MAX_USER_MESSAGE_LENGTH = 10_000;
const encoder = new TextEncoder();

function env(name: string): string | undefined {
  const value = typeof process !== "undefined" ? process.env?.[name] : undefined;
  return value && value.trim() ? value.trim() : undefined;
}

function positive(value: number | undefined, fallback: number, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined || !Number.isFinite(value) || value <= 0) return fallback;
  return Math.min(Math.floor(value), max);
}

function newEventId(): string {
  return globalThis.crypto.randomUUID();
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = (error as { cause?: { code?: string } }).cause?.code;
    return cause ? `${error.name}: ${error.message} (${cause})` : `${error.name}: ${error.message}`;
  }
  return String(error);
}

/** Seconds or an HTTP date, as the service's 429 and 503 answers send it. */
export function parseRetryAfter(header: string | null, now = Date.now()): number | null {
  if (!header) return null;
  const seconds = Number(header.trim());
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const at = Date.parse(header);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

type Timer = ReturnType<typeof setTimeout>;

function setRef(timer: Timer, keepAlive: boolean): void {
  // Node timers can stop holding the process open; other runtimes return a number.
  const handle = timer as unknown as { ref?: () => void; unref?: () => void };
  if (keepAlive) handle.ref?.();
  else handle.unref?.();
}

export class MetricsTracker {
  readonly serviceUrl: string;
  private readonly apiKey: string | undefined;
  private readonly batchSize: number;
  private readonly flushIntervalMs: number;
  private readonly maxQueueSize: number;
  private readonly requestTimeoutMs: number;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;
  readonly shutdownTimeoutMs: number;
  private readonly logger: Logger | null;
  private readonly fetchImpl: typeof fetch;
  private readonly kbVersion: boolean;
  private readonly kbVersionTtlMs: number;
  private readonly kbVersions = new Map<string, KbVersion>();
  private warnedKb = false;

  private queue: Entry[] = [];
  private inFlight = 0;
  private running = false;
  private timer: Timer | null = null;
  private wake: (() => void) | null = null;
  private retryAt = 0;
  private failures = 0;
  private flushWaiters = 0;
  private flushRequested = false;
  private idleWaiters: Array<() => void> = [];
  private readonly counts: Omit<TrackerStats, "pending" | "lastError"> = {
    created: 0,
    duplicates: 0,
    rejected: 0,
    refused: 0,
    dropped: 0,
    abandoned: 0,
    retries: 0,
  };
  private lastError: string | null = null;
  private warnedDown = false;

  constructor(options: TrackerOptions = {}) {
    const url = options.serviceUrl ?? env("MLOPS_SERVICE_URL") ?? "http://localhost:5000";
    this.serviceUrl = url.replace(/\/+$/, "");
    this.apiKey = options.apiKey ?? env("MLOPS_API_KEY");
    this.batchSize = positive(options.batchSize, 100, MAX_BATCH);
    this.flushIntervalMs = positive(options.flushIntervalMs, 1000);
    this.maxQueueSize = Math.max(positive(options.maxQueueSize, 10_000), this.batchSize);
    this.requestTimeoutMs = positive(options.requestTimeoutMs, 5000);
    this.initialBackoffMs = positive(options.initialBackoffMs, 500);
    this.maxBackoffMs = positive(options.maxBackoffMs, 30_000);
    this.shutdownTimeoutMs = positive(options.shutdownTimeoutMs, 5000);
    this.logger = options.logger === undefined ? console : options.logger;
    this.fetchImpl = options.fetch ?? ((input, init) => fetch(input, init));
    this.kbVersion = options.kbVersion ?? true;
    this.kbVersionTtlMs = positive(options.kbVersionTtlMs, 60_000);
  }

  /**
   * Queue one event and return its `event_id`. Takes microseconds: it copies
   * the event, never waits on the network, never throws (null on a bad event).
   */
  track(data: MetricsData): string | null {
    try {
      const event: Record<string, unknown> = { ...data };
      for (const name of WHOLE_NUMBER_FIELDS) {
        const value = event[name];
        // The service wants whole non-negative numbers; Date.now() maths and
        // token estimates sometimes are not.
        if (typeof value === "number" && Number.isFinite(value)) event[name] = Math.max(0, Math.round(value));
      }
      if (typeof data.user_message === "string" && data.user_message.length > MAX_USER_MESSAGE_LENGTH) {
        event.user_message = data.user_message.slice(0, MAX_USER_MESSAGE_LENGTH);
      }
      const id = typeof data.event_id === "string" && data.event_id ? data.event_id : newEventId();
      event.event_id = id;
      const when = data.timestamp;
      // Sent later in a batch, so the reply time is taken now.
      event.timestamp = when instanceof Date ? when.toISOString() : (when ?? new Date().toISOString());
      let kbFor: string | undefined;
      if (event.kb_version == null) {
        delete event.kb_version;
        if (this.kbVersion && typeof data.business_id === "string" && data.business_id) {
          // The version known now is the one that answered; else it is read when the batch is sent.
          const known = this.freshKbVersion(data.business_id);
          if (known) event.kb_version = known.version;
          else if (known === undefined) kbFor = data.business_id;
        }
      }
      const json = JSON.stringify(event);
      const bytes = encoder.encode(json).length + (kbFor ? KB_FIELD_BYTES : 0);
      if (bytes > MAX_BODY_BYTES - 64) {
        this.counts.rejected += 1;
        this.log("error", `metrics event ${id} is larger than a request may be; not sent`);
        return null;
      }
      this.queue.push(kbFor ? { id, json, bytes, kbFor } : { id, json, bytes });
      this.enforceBound();
      this.schedule();
      return id;
    } catch (error) {
      this.lastError = describe(error);
      this.log("error", "metrics event not queued:", this.lastError);
      return null;
    }
  }

  stats(): TrackerStats {
    return { ...this.counts, pending: this.queue.length + this.inFlight, lastError: this.lastError };
  }

  /**
   * Send everything queued now and resolve when the service has answered for
   * all of it, or at the deadline. Never rejects. A retry wait that the
   * service asked for (Retry-After) is still honoured.
   */
  async flush(timeoutMs = 10_000): Promise<FlushResult> {
    if (this.queue.length === 0 && this.inFlight === 0) return { complete: true, pending: 0 };
    this.flushWaiters += 1;
    this.flushRequested = true;
    if (this.timer) setRef(this.timer, true);
    let deadline: Timer | null = null;
    try {
      const idle = new Promise<void>((resolve) => this.idleWaiters.push(resolve));
      const late = new Promise<void>((resolve) => {
        deadline = setTimeout(resolve, Math.max(0, timeoutMs));
      });
      this.kick();
      await Promise.race([idle, late]);
    } finally {
      if (deadline) clearTimeout(deadline);
      this.flushWaiters -= 1;
      if (this.flushWaiters === 0) {
        this.flushRequested = false;
        if (this.timer) setRef(this.timer, false);
      }
    }
    const pending = this.queue.length + this.inFlight;
    return { complete: pending === 0, pending };
  }

  /** Flush with the shutdown deadline; whatever is left is counted as abandoned. */
  async shutdown(timeoutMs = this.shutdownTimeoutMs): Promise<FlushResult> {
    const result = await this.flush(timeoutMs);
    if (!result.complete && this.queue.length > 0) {
      // The request in flight, if any, is left to finish on its own.
      this.counts.abandoned += this.queue.length;
      this.log("error", `metrics: ${this.queue.length} event(s) not delivered before shutdown (${this.lastError ?? "no answer"})`);
      this.queue = [];
    }
    return result;
  }

  // --- internals

  private log(level: "warn" | "error", ...args: unknown[]): void {
    try {
      this.logger?.[level](...args);
    } catch {
      // A broken logger must not break the chat either.
    }
  }

  private enforceBound(): void {
    // The batch in flight is not counted: memory stays under maxQueueSize plus
    // one batch, and when that batch comes back unsent it is the oldest and
    // goes first, so what is kept is always the newest events.
    const over = this.queue.length - this.maxQueueSize;
    if (over <= 0) return;
    this.queue.splice(0, over);
    if (this.counts.dropped === 0) {
      this.log("error", `metrics queue full (${this.maxQueueSize} events): dropping the oldest until the service answers`);
    }
    this.counts.dropped += over;
  }

  private schedule(): void {
    if (this.running) {
      // A batch filled up while the sender waits for its interval: wake it early,
      // unless it is waiting out a retry.
      if (this.queue.length >= this.batchSize && Date.now() >= this.retryAt) this.wake?.();
      return;
    }
    this.kick();
  }

  private kick(): void {
    if (this.running) {
      if (this.flushRequested && Date.now() >= this.retryAt) this.wake?.();
      return;
    }
    this.running = true;
    this.run()
      .catch((error) => {
        this.lastError = describe(error);
        this.log("error", "metrics sender stopped:", this.lastError);
      })
      .finally(() => {
        this.running = false;
        this.wake = null;
        if (this.queue.length > 0) this.kick();
        else this.notifyIdle();
      });
  }

  private notifyIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        if (this.timer) clearTimeout(this.timer);
        this.timer = null;
        this.wake = null;
        resolve();
      };
      this.timer = setTimeout(done, Math.max(0, ms));
      setRef(this.timer, this.flushWaiters > 0);
      this.wake = done;
    });
  }

  private async run(): Promise<void> {
    while (this.queue.length > 0) {
      const now = Date.now();
      if (now < this.retryAt) {
        await this.sleep(this.retryAt - now);
        continue;
      }
      if (this.queue.length < this.batchSize && !this.flushRequested) {
        // Let a batch fill for up to one interval; a full batch or a flush wakes us.
        await this.sleep(this.flushIntervalMs);
        if (Date.now() < this.retryAt) continue;
      }
      const batch = this.takeBatch();
      if (batch.length === 0) continue;
      this.inFlight = batch.length;
      let outcome: Outcome;
      try {
        outcome = await this.send(batch);
      } finally {
        this.inFlight = 0;
      }
      if (outcome.kind === "retry") {
        this.queue.unshift(...batch);
        this.enforceBound();
        this.counts.retries += 1;
        this.failures += 1;
        this.retryAt = Date.now() + outcome.waitMs;
        if (!this.warnedDown) {
          this.warnedDown = true;
          this.log("warn", `metrics service unavailable (${this.lastError}); retrying in the background`);
        }
      } else {
        if (this.warnedDown) this.log("warn", "metrics service reachable again");
        this.warnedDown = false;
        this.failures = 0;
        this.retryAt = 0;
      }
    }
  }

  private takeBatch(): Entry[] {
    let bytes = 16;
    let count = 0;
    for (const entry of this.queue) {
      if (count >= this.batchSize || bytes + entry.bytes + 1 > MAX_BODY_BYTES) break;
      bytes += entry.bytes + 1;
      count += 1;
    }
    return this.queue.splice(0, count);
  }

  private backoff(): number {
    // Full jitter: a random wait up to an exponentially growing cap, so many
    // chat servers coming back at once do not retry in step.
    const cap = Math.min(this.maxBackoffMs, this.initialBackoffMs * 2 ** Math.min(this.failures, 20));
    return Math.random() * cap;
  }

  /** The business's version while fresh: a version, null (the service gave none), undefined (not read lately). */
  private freshKbVersion(businessId: string): KbVersion | null | undefined {
    const known = this.kbVersions.get(businessId);
    if (!known || Date.now() - known.readAt > this.kbVersionTtlMs) return undefined;
    return known.version === null ? null : known;
  }

  private async readKbVersion(businessId: string): Promise<void> {
    if (this.freshKbVersion(businessId) !== undefined) return;
    const headers: Record<string, string> = {};
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    let status = 0;
    try {
      const response = await this.fetchImpl(
        `${this.serviceUrl}/api/knowledge-base/?business_id=${encodeURIComponent(businessId)}`,
        { method: "GET", headers, signal: AbortSignal.timeout(this.requestTimeoutMs) },
      );
      status = response.status;
      const body = (await response.json().catch(() => ({}))) as { version?: unknown };
      const version = body.version;
      if (response.ok && typeof version === "string" && version && version.length <= MAX_KB_VERSION_LENGTH) {
        this.kbVersions.set(businessId, { version, readAt: Date.now() });
        return;
      }
    } catch {
      // The service is away: the batch's own request will say so; read again on the next try.
      return;
    }
    if (status >= 500) return;
    // A key without the read scope (403), no knowledge base yet (404): no version for a while.
    this.kbVersions.set(businessId, { version: null, readAt: Date.now() });
    if (!this.warnedKb) {
      this.warnedKb = true;
      this.log("warn", `metrics: no kb_version for ${businessId} (GET /api/knowledge-base/ answered ${status}); events go without it`);
    }
  }

  private async bodyOf(batch: Entry[]): Promise<string> {
    const businesses = new Set(batch.flatMap((entry) => (entry.kbFor ? [entry.kbFor] : [])));
    for (const business of businesses) await this.readKbVersion(business);
    const events = batch.map((entry) => {
      const known = entry.kbFor ? this.freshKbVersion(entry.kbFor) : undefined;
      return known ? `{"kb_version":${JSON.stringify(known.version)},${entry.json.slice(1)}` : entry.json;
    });
    return `{"events":[${events.join(",")}]}`;
  }

  private async send(batch: Entry[]): Promise<Outcome> {
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    const body = await this.bodyOf(batch);
    let response: Response;
    try {
      response = await this.fetchImpl(`${this.serviceUrl}/track/batch`, {
        method: "POST",
        headers,
        body,
        signal: AbortSignal.timeout(this.requestTimeoutMs),
      });
    } catch (error) {
      // Refused connection, reset, DNS or timeout: the events may or may not
      // be stored; their event_ids make the retry safe either way.
      this.lastError = describe(error);
      return { kind: "retry", waitMs: this.backoff() };
    }
    const status = response.status;
    if (status === 200 || status === 207) {
      let answer: { created?: number; duplicates?: number; rejected?: number; results?: unknown[] } = {};
      try {
        answer = (await response.json()) as typeof answer;
      } catch (error) {
        // The service stored the batch and said so; only its words were lost.
        this.lastError = describe(error);
      }
      this.counts.created += Number(answer.created ?? batch.length);
      this.counts.duplicates += Number(answer.duplicates ?? 0);
      const rejected = Number(answer.rejected ?? 0);
      if (rejected > 0) {
        this.counts.rejected += rejected;
        const first = (answer.results ?? []).find(
          (result) => (result as { status?: string }).status === "rejected",
        ) as { event_id?: string; errors?: unknown } | undefined;
        this.lastError = `${rejected} event(s) rejected: ${JSON.stringify(first?.errors ?? {})}`;
        this.log("error", `metrics: ${this.lastError}`);
      }
      return { kind: "done" };
    }
    const text = await response.text().catch(() => "");
    this.lastError = `HTTP ${status} ${text.slice(0, 300)}`;
    if (status === 429 || status === 408 || status >= 500) {
      const asked = parseRetryAfter(response.headers.get("Retry-After"));
      // The service's own wait wins over our backoff (capped in case of a silly header).
      const wait = asked === null ? this.backoff() : Math.min(asked, MAX_RETRY_AFTER_MS) + Math.random() * 250;
      return { kind: "retry", waitMs: wait };
    }
    // Any other 4xx will fail the same way again: a bad key, a key of another
    // business, a body the service will not take.
    this.counts.refused += batch.length;
    this.log("error", `metrics: the service refused ${batch.length} event(s): ${this.lastError}`);
    return { kind: "drop" };
  }
}
