import assert from "node:assert/strict";
import { after, test } from "node:test";

import { MetricsTracker, calculateTokenUsage, parseRetryAfter, tokenFields, type MetricsData } from "mlops-chat-tracking";

import { deadPort, reply, startFake, stored, type FakeService } from "./helpers.js";

const open: FakeService[] = [];
after(async () => {
  await Promise.all(open.map((fake) => fake.close()));
});

async function fake(...args: Parameters<typeof startFake>): Promise<FakeService> {
  const service = await startFake(...args);
  open.push(service);
  return service;
}

function tracker(url: string, options: ConstructorParameters<typeof MetricsTracker>[0] = {}): MetricsTracker {
  return new MetricsTracker({ serviceUrl: url, logger: null, initialBackoffMs: 20, maxBackoffMs: 200, ...options });
}

test("it sends full batches of the configured size and every event once", async () => {
  const service = await fake();
  const metrics = tracker(service.url, { batchSize: 100, flushIntervalMs: 60_000 });
  const ids = Array.from({ length: 250 }, (_, i) => metrics.track(reply({ response_time_ms: i })));
  const result = await metrics.flush(5000);
  assert.deepEqual(result, { complete: true, pending: 0 });
  assert.deepEqual(service.requests.map((r) => r.events.length), [100, 100, 50]);
  assert.deepEqual(service.ids(), ids);
  assert.equal(metrics.stats().created, 250);
});

test("it sends a part-filled batch once the flush interval has passed, without a flush call", async () => {
  const service = await fake();
  const metrics = tracker(service.url, { batchSize: 100, flushIntervalMs: 30 });
  metrics.track(reply());
  metrics.track(reply());
  while (service.requests.length === 0) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.equal(service.requests[0]?.events.length, 2);
});

test("each event gets a uuid event_id and a reply timestamp, and keeps the caller's own", async () => {
  const service = await fake();
  const metrics = tracker(service.url);
  const mine = "0b5b2a9e-5a55-4e1c-9d3b-3f2f7a1f2c11";
  metrics.track(reply({ event_id: mine, timestamp: new Date("2026-01-02T03:04:05Z") }));
  const made = metrics.track(reply());
  await metrics.flush();
  const [first, second] = service.requests[0]!.events;
  assert.equal(first!.event_id, mine);
  assert.equal(first!.timestamp, "2026-01-02T03:04:05.000Z");
  assert.match(String(second!.event_id), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(second!.event_id, made);
  assert.ok(!Number.isNaN(Date.parse(String(second!.timestamp))));
});

test("it rounds fractional milliseconds and token counts, which the service refuses", async () => {
  const service = await fake();
  const metrics = tracker(service.url);
  metrics.track(reply({ response_time_ms: 1234.56, tokens_used: 99.5, input_tokens: -3 }));
  await metrics.flush();
  const event = service.requests[0]!.events[0]!;
  assert.equal(event.response_time_ms, 1235);
  assert.equal(event.tokens_used, 100);
  assert.equal(event.input_tokens, 0);
});

test("it sends the cache and reasoning counts of the provider's usage as whole numbers", async () => {
  const service = await fake();
  const metrics = tracker(service.url);
  const usage = { input_tokens: 12, cache_read_input_tokens: 2890, cache_creation_input_tokens: 1104, output_tokens: 356 };
  metrics.track(reply({ ...tokenFields(calculateTokenUsage("system", "hello", "hi", usage)) }));
  metrics.track(reply({ input_tokens: 100, cache_read_input_tokens: 40.4, output_tokens: 20, reasoning_output_tokens: -2 }));
  await metrics.flush();
  const [anthropic, rounded] = service.requests[0]!.events;
  assert.deepEqual(
    [anthropic!.tokens_used, anthropic!.input_tokens, anthropic!.output_tokens, anthropic!.cache_read_input_tokens, anthropic!.cache_write_input_tokens],
    [4362, 4006, 356, 2890, 1104],
  );
  assert.ok(!("reasoning_output_tokens" in anthropic!));
  assert.deepEqual([rounded!.cache_read_input_tokens, rounded!.reasoning_output_tokens], [40, 0]);
});

test("it sends a score or a message to score, cutting a message longer than the service takes", async () => {
  const service = await fake();
  const metrics = tracker(service.url);
  metrics.track(reply({ user_sentiment: -0.4 }));
  metrics.track(reply({ user_message: "Thanks, that was quick!" }));
  metrics.track(reply({ user_message: "a".repeat(12_000) }));
  await metrics.flush();
  const [scored, short, long] = service.requests[0]!.events;
  assert.equal(scored!.user_sentiment, -0.4);
  assert.equal(short!.user_message, "Thanks, that was quick!");
  assert.equal(long!.user_message, "a".repeat(10_000));
});

test("it sends the API key as a bearer token", async () => {
  const service = await fake();
  const metrics = tracker(service.url, { apiKey: "mlk_abc_secret" });
  metrics.track(reply());
  await metrics.flush();
  assert.equal(service.requests[0]!.headers.authorization, "Bearer mlk_abc_secret");
});

test("a 503 with Retry-After is retried after that wait with the same event_ids", async () => {
  const service = await fake((received, index) =>
    index === 0 ? { status: 503, headers: { "Retry-After": "1" } } : stored(received.events),
  );
  const metrics = tracker(service.url);
  const ids = [metrics.track(reply()), metrics.track(reply())];
  const result = await metrics.flush(10_000);
  assert.equal(result.complete, true);
  assert.equal(service.requests.length, 2);
  assert.deepEqual(service.ids(), [...ids, ...ids]);
  // Retry-After is a floor: timers never fire early, so this cannot flake.
  assert.ok(service.requests[1]!.at - service.requests[0]!.at >= 990);
  assert.equal(metrics.stats().retries, 1);
});

test("429 and 500 answers are retried until the service takes the events", async () => {
  const statuses = [429, 500, 502];
  const service = await fake((received, index) =>
    index < statuses.length ? { status: statuses[index]! } : stored(received.events),
  );
  const metrics = tracker(service.url);
  const id = metrics.track(reply());
  assert.equal((await metrics.flush(10_000)).complete, true);
  assert.deepEqual(service.ids(), [id, id, id, id]);
  assert.deepEqual({ created: metrics.stats().created, retries: metrics.stats().retries }, { created: 1, retries: 3 });
});

for (const status of [400, 401, 403, 413, 415]) {
  test(`a ${status} answer is not retried and its events are counted as refused`, async () => {
    const service = await fake(() => ({ status, body: { error: "no", errors: { key: ["bad"] } } }));
    const metrics = tracker(service.url);
    metrics.track(reply());
    metrics.track(reply());
    const result = await metrics.flush(2000);
    assert.equal(result.complete, true);
    assert.equal(service.requests.length, 1);
    assert.deepEqual({ refused: metrics.stats().refused, retries: metrics.stats().retries }, { refused: 2, retries: 0 });
  });
}

test("events the service rejects in a 207 are counted as rejected, the rest as created", async () => {
  const service = await fake((received) => ({
    status: 207,
    body: {
      created: received.events.length - 1,
      duplicates: 0,
      rejected: 1,
      results: [{ index: 0, event_id: null, status: "rejected", errors: { tokens_used: ["must be a JSON number"] } }],
    },
  }));
  const metrics = tracker(service.url);
  metrics.track(reply({ tokens_used: "lots" as unknown as number }));
  metrics.track(reply());
  await metrics.flush();
  assert.equal(service.requests.length, 1);
  assert.deepEqual([metrics.stats().created, metrics.stats().rejected], [1, 1]);
  assert.match(String(metrics.stats().lastError), /tokens_used/);
});

test("a service that is down leaves events queued and they arrive once it is back", async () => {
  const port = await deadPort();
  const metrics = tracker(`http://127.0.0.1:${port}`, { flushIntervalMs: 10 });
  const ids = [metrics.track(reply()), metrics.track(reply()), metrics.track(reply())];
  const early = await metrics.flush(300);
  assert.equal(early.complete, false);
  assert.equal(metrics.stats().pending, 3);
  for (let i = 0; i < 100 && metrics.stats().retries === 0; i += 1) await metrics.flush(50);
  assert.ok(metrics.stats().retries >= 1);
  const service = await fake(undefined, port);
  assert.equal((await metrics.flush(5000)).complete, true);
  assert.deepEqual(service.ids(), ids);
});

test("a slow service is given up on after the request timeout and the retry reuses the event_ids", async () => {
  const service = await fake((received, index) => (index === 0 ? { ...stored(received.events), delayMs: 1500 } : undefined));
  const metrics = tracker(service.url, { requestTimeoutMs: 200 });
  const id = metrics.track(reply());
  assert.equal((await metrics.flush(5000)).complete, true);
  assert.deepEqual(service.ids(), [id, id]);
  assert.match(String(metrics.stats().lastError), /Timeout|abort/i);
});

test("when the service stays away the queue keeps only the newest events and counts the dropped", async () => {
  const port = await deadPort();
  const metrics = tracker(`http://127.0.0.1:${port}`, { maxQueueSize: 50, batchSize: 10, flushIntervalMs: 5 });
  const ids = Array.from({ length: 200 }, (_, i) => metrics.track(reply({ response_time_ms: i })));
  await metrics.flush(100);
  const stats = metrics.stats();
  assert.equal(stats.pending, 50);
  assert.equal(stats.dropped, 150);
  const service = await fake(undefined, port);
  assert.equal((await metrics.flush(5000)).complete, true);
  assert.deepEqual(service.ids().sort(), ids.slice(150).sort());
});

test("a batch never exceeds the service's 1 MiB limit", async () => {
  const service = await fake();
  const metrics = tracker(service.url, { batchSize: 500 });
  const big = "x".repeat(100_000);
  for (let i = 0; i < 25; i += 1) metrics.track(reply({ intent_detected: big }));
  assert.equal((await metrics.flush(5000)).complete, true);
  assert.equal(service.ids().length, 25);
  assert.ok(service.requests.length >= 3);
  for (const received of service.requests) assert.ok(JSON.stringify({ events: received.events }).length < 1024 * 1024);
});

test("track never throws, whatever it is given or however the network fails", async () => {
  const circular: Record<string, unknown> = reply();
  circular.self = circular;
  const metrics = new MetricsTracker({
    serviceUrl: "http://127.0.0.1:9",
    logger: {
      warn: () => {
        throw new Error("broken logger");
      },
      error: () => {
        throw new Error("broken logger");
      },
    },
    fetch: () => {
      throw new TypeError("fetch exploded");
    },
    initialBackoffMs: 10,
  });
  assert.equal(metrics.track(circular as unknown as MetricsData), null);
  assert.equal(metrics.track(undefined as unknown as MetricsData), null);
  const id = metrics.track(reply());
  assert.equal(typeof id, "string");
  const result = await metrics.flush(200);
  assert.equal(result.complete, false);
  assert.match(String(metrics.stats().lastError), /fetch exploded/);
});

test("a shutdown that cannot reach the service gives up at its deadline and counts the abandoned events", async () => {
  // A refusal that comes at once, so no request is in flight at the deadline.
  const metrics = tracker("http://127.0.0.1:9", { fetch: () => Promise.reject(new TypeError("fetch failed")) });
  metrics.track(reply());
  metrics.track(reply());
  const result = await metrics.shutdown(300);
  assert.equal(result.complete, false);
  assert.deepEqual([metrics.stats().abandoned, metrics.stats().pending], [2, 0]);
});

test("Retry-After is read as seconds or as an HTTP date", () => {
  assert.equal(parseRetryAfter("5"), 5000);
  assert.equal(parseRetryAfter("Wed, 21 Oct 2015 07:28:10 GMT", Date.parse("Wed, 21 Oct 2015 07:28:00 GMT")), 10_000);
  assert.equal(parseRetryAfter("soon"), null);
  assert.equal(parseRetryAfter(null), null);
});

test("an event without kb_version gets its business's own knowledge-base version, read once a while", async () => {
  const service = await fake();
  service.kbVersions.set("clinic", "kb-aaaaaaaaaaaa");
  service.kbVersions.set("salon", "kb-bbbbbbbbbbbb");
  const metrics = tracker(service.url, { kbVersionTtlMs: 60_000 });
  metrics.track(reply({ business_id: "clinic" }));
  metrics.track(reply({ business_id: "salon" }));
  metrics.track(reply({ business_id: "salon", kb_version: "kb-mine" }));
  await metrics.flush();
  metrics.track(reply({ business_id: "clinic" }));
  await metrics.flush();
  const events = service.requests.flatMap((r) => r.events);
  assert.deepEqual(
    events.map((event) => [event.business_id, event.kb_version]),
    [["clinic", "kb-aaaaaaaaaaaa"], ["salon", "kb-bbbbbbbbbbbb"], ["salon", "kb-mine"], ["clinic", "kb-aaaaaaaaaaaa"]],
  );
  assert.deepEqual(service.kbLookups, ["clinic", "salon"]);
});

test("a business with no knowledge-base version, or kbVersion off, sends its events without one", async () => {
  const service = await fake();
  const metrics = tracker(service.url);
  metrics.track(reply({ business_id: "nobody" }));
  await metrics.flush();
  const off = tracker(service.url, { kbVersion: false });
  service.kbVersions.set("clinic", "kb-aaaaaaaaaaaa");
  off.track(reply({ business_id: "clinic" }));
  await off.flush();
  const events = service.requests.flatMap((r) => r.events);
  assert.deepEqual(events.map((event) => "kb_version" in event), [false, false]);
  assert.deepEqual(service.kbLookups, ["nobody"]);
  assert.equal(metrics.stats().created, 1);
});
