/**
 * MLOps tracking for the chat app: a drop-in for `lib/mlops-tracking.ts`.
 *
 * `trackMetrics`, `calculateTokenUsage`, `estimateApiCost` and `MetricsData`
 * keep their names and argument shapes. `trackMetrics` now only queues the
 * event (microseconds); a background sender delivers it in batches, retries
 * with the same `event_id`, and flushes when the process exits.
 *
 * Environment: MLOPS_SERVICE_URL (the service's base URL) and MLOPS_API_KEY
 * (an ingest key; may be left out against a development service).
 *
 * `assignVariant(experiment, conversationId, [a, b], split)` picks a
 * conversation's arm of an A/B experiment, as the Python client and the
 * service do.
 */

import { MetricsTracker, type FlushResult, type MetricsData, type TrackerOptions, type TrackerStats } from "./client.js";

export { MetricsTracker, parseRetryAfter } from "./client.js";
export type { FlushResult, Logger, MetricsData, TrackerOptions, TrackerStats } from "./client.js";
export { Experiment, assignVariant } from "./experiments.js";
export { calculateTokenUsage, estimateApiCost, normaliseUsage, reportedUsage, tokenFields } from "./tokens.js";
export type { NormalisedUsage, ProviderUsage, TokenFields, TokenUsage } from "./tokens.js";

// Kept on globalThis so that Next.js dev reloads, which evaluate this module
// again, share one queue and one exit hook instead of piling them up.
interface Shared {
  tracker: MetricsTracker | null;
  exitHookInstalled: boolean;
}
const SHARED_KEY = Symbol.for("mlops-chat-tracking");
const shared: Shared = ((globalThis as Record<symbol, Shared | undefined>)[SHARED_KEY] ??= {
  tracker: null,
  exitHookInstalled: false,
});

function installExitHook(): void {
  if (shared.exitHookInstalled || typeof process === "undefined" || typeof process.once !== "function") return;
  shared.exitHookInstalled = true;
  // 'beforeExit' comes when the event loop has run dry: the moment a script or
  // a server that is closing down would lose what is still queued. One try
  // only: against a service that is down, a second would keep the process
  // alive for ever.
  let attempted = false;
  process.on("beforeExit", () => {
    const tracker = shared.tracker;
    if (!tracker || attempted || tracker.stats().pending === 0) return;
    attempted = true;
    void tracker.shutdown();
  });
}

/** The process-wide tracker that `trackMetrics` uses, made on first use from the environment. */
export function getTracker(): MetricsTracker {
  if (!shared.tracker) {
    shared.tracker = new MetricsTracker();
    installExitHook();
  }
  return shared.tracker;
}

/**
 * Replace the process-wide tracker (options override the environment).
 * What the old one still had queued is flushed in the background.
 */
export function configureTracking(options: TrackerOptions = {}): MetricsTracker {
  const previous = shared.tracker;
  const tracker = new MetricsTracker(options);
  shared.tracker = tracker;
  installExitHook();
  if (previous && previous.stats().pending > 0) void previous.flush(previous.shutdownTimeoutMs);
  return tracker;
}

/**
 * Report one AI reply. Returns at once: the event is queued and sent in the
 * background. The promise always resolves (the seed's callers chain
 * `.catch(...)` on it; that handler never runs).
 */
export function trackMetrics(metricsData: MetricsData): Promise<void> {
  try {
    getTracker().track(metricsData);
  } catch {
    // track() does not throw; this guards the getter against a broken environment.
  }
  return Promise.resolve();
}

/**
 * Send what is queued and wait for the answer, at most `timeoutMs`. For
 * serverless routes: `waitUntil(flush())` or Next.js `after(() => flush())`.
 */
export function flush(timeoutMs?: number): Promise<FlushResult> {
  return shared.tracker ? shared.tracker.flush(timeoutMs) : Promise.resolve({ complete: true, pending: 0 });
}

/** Flush with the shutdown deadline (MetricsTracker option `shutdownTimeoutMs`, 5 s by default). */
export function shutdown(timeoutMs?: number): Promise<FlushResult> {
  return shared.tracker ? shared.tracker.shutdown(timeoutMs) : Promise.resolve({ complete: true, pending: 0 });
}

/** Counters of the process-wide tracker: created, duplicates, rejected, dropped... */
export function trackingStats(): TrackerStats {
  return getTracker().stats();
}

/**
 * Flush before the process stops on these signals. After the flush the
 * signal is raised again when no other handler is left, so the process still
 * ends the way it would have.
 */
export function flushOnSignals(signals: NodeJS.Signals[] = ["SIGTERM", "SIGINT"]): void {
  if (typeof process === "undefined" || typeof process.once !== "function") return;
  for (const signal of signals) {
    process.once(signal, () => {
      void shutdown().finally(() => {
        if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
      });
    });
  }
}

/** What `withMetrics` hands to its `describe` callback once the route has finished. */
export interface RouteOutcome<Req extends Request = Request> {
  request: Req;
  response?: Response;
  error?: unknown;
  durationMs: number;
  /** False when the route threw or answered with a 5xx. */
  ok: boolean;
}

/**
 * Wrap a route handler so each call is timed and reported as one event.
 * What the handler returns or throws is passed through untouched. `describe`
 * turns the outcome into the event's fields (at least `business_id`), or
 * returns null to report nothing for that call; when it throws, nothing is
 * reported and the route is unaffected.
 */
export function withMetrics<Req extends Request, Args extends unknown[], R extends Response>(
  handler: (request: Req, ...args: Args) => R | Promise<R>,
  describe: (outcome: RouteOutcome<Req>) => Partial<MetricsData> | null | undefined,
): (request: Req, ...args: Args) => Promise<R> {
  const report = (outcome: RouteOutcome<Req>): void => {
    try {
      const fields = describe(outcome);
      if (!fields) return;
      const failed = !outcome.ok;
      trackMetrics({
        response_time_ms: outcome.durationMs,
        tokens_used: 0,
        success_rate: failed ? 0 : 1,
        ...(failed ? { response_type: "error" } : {}),
        ...fields,
        business_id: fields.business_id || "unknown",
      });
    } catch {
      // A failing describe() loses this event, never the response.
    }
  };
  return async (request: Req, ...args: Args): Promise<R> => {
    const started = performance.now();
    let response: R;
    try {
      response = await handler(request, ...args);
    } catch (error) {
      report({ request, error, durationMs: Math.round(performance.now() - started), ok: false });
      throw error;
    }
    report({ request, response, durationMs: Math.round(performance.now() - started), ok: response.status < 500 });
    return response;
  };
}
