/**
 * Against the real service, started by tests/test_client_typescript.py, which
 * passes MLOPS_TEST_SERVICE_URL, MLOPS_TEST_API_KEY (an ingest key of
 * MLOPS_TEST_BUSINESS_ID) and MLOPS_TEST_REPORT, a file where these tests
 * list the event_ids they expect the service to have stored; the Python side
 * then checks the stored rows against that list.
 */

import assert from "node:assert/strict";
import { appendFileSync } from "node:fs";
import { test } from "node:test";

import { MetricsTracker, configureTracking, flush, trackingStats } from "mlops-chat-tracking";

import { POST } from "../fixtures/app/api/chat/route.js";
import { reply } from "./helpers.js";

const url = process.env.MLOPS_TEST_SERVICE_URL;
const apiKey = process.env.MLOPS_TEST_API_KEY;
const businessId = process.env.MLOPS_TEST_BUSINESS_ID ?? "test-business";
const report = process.env.MLOPS_TEST_REPORT;
const skip = url && apiKey ? false : "needs MLOPS_TEST_SERVICE_URL and MLOPS_TEST_API_KEY (run from pytest)";

function expectStored(ids: Array<string | null>): void {
  if (report) appendFileSync(report, ids.map((id) => `${id}\n`).join(""));
}

test("the real service stores each tracked event, and a resend of the same events only counts duplicates", { skip }, async () => {
  const first = new MetricsTracker({ serviceUrl: url, apiKey, batchSize: 50, logger: null });
  const ids = Array.from({ length: 120 }, (_, i) =>
    first.track(reply({ business_id: businessId, conversation_id: `live-${i % 7}`, response_time_ms: 200 + i })),
  );
  assert.deepEqual(await first.flush(20_000), { complete: true, pending: 0 });
  assert.equal(first.stats().created, 120);
  expectStored(ids);

  // A second process sending the same events, as a retry after a lost answer would.
  const again = new MetricsTracker({ serviceUrl: url, apiKey, batchSize: 500, logger: null });
  for (const id of ids) again.track(reply({ business_id: businessId, event_id: id ?? undefined }));
  assert.deepEqual(await again.flush(20_000), { complete: true, pending: 0 });
  assert.deepEqual([again.stats().created, again.stats().duplicates], [0, 120]);
});

test("a key the service does not know is refused once and not retried", { skip }, async () => {
  const metrics = new MetricsTracker({ serviceUrl: url, apiKey: "mlk_unknown_0000000000000000", logger: null });
  metrics.track(reply({ business_id: businessId }));
  assert.equal((await metrics.flush(10_000)).complete, true);
  const stats = metrics.stats();
  assert.deepEqual([stats.refused, stats.retries, stats.created], [1, 0, 0]);
  assert.match(String(stats.lastError), /HTTP 401/);
});

test("the seed's chat route answers as before and each of its replies reaches the service", { skip }, async () => {
  configureTracking({ serviceUrl: url, apiKey, logger: null });
  const conversation = [
    "Hi, what are your opening hours?",
    "Can I book an appointment for a check-up?",
    "Tuesday at 10 works, please book it.",
    "[model down] are you there?",
    "Can I speak to a person?",
  ];
  const statuses: number[] = [];
  const messages: Array<{ role: "user" | "assistant"; content: string }> = [];
  for (const text of conversation) {
    messages.push({ role: "user", content: text });
    const response = await POST(
      new Request("http://chat.test/api/chat", {
        method: "POST",
        headers: { "content-type": "application/json", "x-session-id": "live-session" },
        body: JSON.stringify({ messages, businessId, conversationId: "live-route" }),
      }),
    );
    statuses.push(response.status);
    const body = (await response.json()) as { message?: string; error?: string };
    messages.push({ role: "assistant", content: body.message ?? body.error ?? "" });
  }
  assert.deepEqual(statuses, [200, 200, 200, 500, 200]);
  assert.equal((await flush(20_000)).complete, true);
  const stats = trackingStats();
  assert.deepEqual([stats.created, stats.rejected, stats.refused, stats.dropped], [5, 0, 0, 0]);
});
