import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { dirname, resolve } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  calculateTokenUsage,
  configureTracking,
  estimateApiCost,
  flush,
  shutdown,
  tokenFields,
  trackMetrics,
  trackingStats,
  withMetrics,
} from "mlops-chat-tracking";

import { deadPort, reply, startFake, type FakeService } from "./helpers.js";

const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

const open: FakeService[] = [];
after(async () => {
  await Promise.all(open.map((fake) => fake.close()));
});

async function fake(): Promise<FakeService> {
  const service = await startFake();
  open.push(service);
  return service;
}

test("the token estimate is the seed's: about four characters per token, rounded up per part", () => {
  const usage = calculateTokenUsage("s".repeat(401), "u".repeat(8), "r".repeat(9));
  assert.deepEqual(
    [usage.totalTokens, usage.systemTokens, usage.userTokens, usage.responseTokens, usage.estimated],
    [101 + 2 + 3, 101, 2, 3, true],
  );
  assert.deepEqual(tokenFields(usage), { tokens_used: 106 });
});

test("the provider's reported usage wins over the estimate, input and output apart", () => {
  const openai = calculateTokenUsage("system", "hi", "hello", { prompt_tokens: 310, completion_tokens: 42, total_tokens: 352 });
  assert.deepEqual(tokenFields(openai), { tokens_used: 352, input_tokens: 310, output_tokens: 42 });
  const gemini = calculateTokenUsage("", "", "", { promptTokenCount: 11, candidatesTokenCount: 4, totalTokenCount: 15 });
  assert.deepEqual([gemini.inputTokens, gemini.outputTokens, gemini.totalTokens, gemini.estimated], [11, 4, 15, false]);
  const anthropic = calculateTokenUsage("", "", "", { input_tokens: 20, output_tokens: 5 });
  assert.equal(anthropic.totalTokens, 25);
});

test("the cost estimate keeps the seed's rate and rounding", () => {
  assert.equal(estimateApiCost(1_000_000), 0.1875);
  assert.equal(estimateApiCost(150), 0.000028);
  assert.equal(estimateApiCost(Number.NaN), 0);
});

test("trackMetrics returns a resolved promise at once, even when the service is unreachable", async () => {
  configureTracking({ serviceUrl: `http://127.0.0.1:${await deadPort()}`, logger: null, initialBackoffMs: 10 });
  let caught = false;
  await trackMetrics(reply()).catch(() => {
    caught = true;
  });
  assert.equal(caught, false);
  assert.equal((await flush(100)).complete, false);
  for (let i = 0; i < 100 && trackingStats().retries === 0; i += 1) await flush(50);
  assert.ok(trackingStats().retries >= 1);
  assert.equal(trackingStats().pending, 1);
  await shutdown(10);
});

test("withMetrics passes the route's response and errors through untouched and reports each call", async () => {
  const service = await fake();
  configureTracking({ serviceUrl: service.url, logger: null });
  const answer = Response.json({ message: "hi" });
  const failure = new Error("model down");
  const route = withMetrics(
    async (request: Request) => {
      const body = (await request.json()) as { fail?: string };
      if (body.fail === "throw") throw failure;
      if (body.fail === "500") return Response.json({ error: "x" }, { status: 500 });
      return answer;
    },
    ({ ok }) => ({ business_id: "acme", intent_detected: ok ? "general" : "error" }),
  );
  const post = (fail?: string) =>
    new Request("http://chat.test/api/chat", { method: "POST", body: JSON.stringify({ fail }) });

  assert.equal(await route(post()), answer);
  await assert.rejects(route(post("throw")), (error) => error === failure);
  assert.equal((await route(post("500"))).status, 500);
  await flush(5000);
  const events = service.requests.flatMap((r) => r.events);
  assert.deepEqual(
    events.map((e) => [e.business_id, e.success_rate, e.response_type ?? null, e.intent_detected]),
    [
      ["acme", 1, null, "general"],
      ["acme", 0, "error", "error"],
      ["acme", 0, "error", "error"],
    ],
  );
  assert.ok(events.every((e) => Number.isInteger(e.response_time_ms)));
});

test("withMetrics reports nothing when describe declines or throws, and the route still answers", async () => {
  const service = await fake();
  configureTracking({ serviceUrl: service.url, logger: null });
  const quiet = withMetrics(async () => new Response("ok"), () => null);
  const broken = withMetrics(async () => new Response("ok"), () => {
    throw new Error("describe bug");
  });
  assert.equal(await (await quiet(new Request("http://chat.test/"))).text(), "ok");
  assert.equal(await (await broken(new Request("http://chat.test/"))).text(), "ok");
  await flush(1000);
  assert.equal(service.ids().length, 0);
});

/** Run a small ESM script as its own process (asynchronously: the stand-in service lives in this one). */
function runScript(source: string, env: Record<string, string>) {
  return new Promise<{ status: number | null; signal: NodeJS.Signals | null; stderr: string }>((done) => {
    const child = execFile(
      process.execPath,
      ["--input-type=module", "-e", source],
      { cwd: packageDir, env: { PATH: process.env.PATH ?? "", ...env }, timeout: 30_000 },
      (_error, _stdout, stderr) => done({ status: child.exitCode, signal: child.signalCode, stderr: String(stderr) }),
    );
  });
}

test("a script that ends without flushing still delivers its events before the process exits", async () => {
  const service = await fake();
  const done = await runScript(
    `import { trackMetrics } from "mlops-chat-tracking";
     for (let i = 0; i < 5; i += 1) trackMetrics({ business_id: "b", response_time_ms: 5, tokens_used: 1 });`,
    { MLOPS_SERVICE_URL: service.url },
  );
  assert.equal(done.status, 0, done.stderr);
  assert.equal(service.ids().length, 5);
});

test("with the service down, an ending process gives up at the shutdown deadline instead of hanging", async () => {
  const done = await runScript(
    `import { configureTracking, trackMetrics } from "mlops-chat-tracking";
     configureTracking({ shutdownTimeoutMs: 500 });
     trackMetrics({ business_id: "b", response_time_ms: 5, tokens_used: 1 });`,
    { MLOPS_SERVICE_URL: `http://127.0.0.1:${await deadPort()}` },
  );
  assert.equal(done.status, 0, done.stderr);
  assert.match(done.stderr, /1 event\(s\) not delivered before shutdown/);
});

test("flushOnSignals delivers the queue on SIGTERM and the process still ends by that signal", async () => {
  const service = await fake();
  const done = await runScript(
    `import { flushOnSignals, trackMetrics } from "mlops-chat-tracking";
     flushOnSignals();
     setInterval(() => {}, 1000);
     for (let i = 0; i < 3; i += 1) trackMetrics({ business_id: "b", response_time_ms: 5, tokens_used: 1 });
     process.kill(process.pid, "SIGTERM");`,
    { MLOPS_SERVICE_URL: service.url },
  );
  assert.equal(done.signal, "SIGTERM", done.stderr);
  assert.equal(service.ids().length, 3);
});
