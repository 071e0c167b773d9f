// Exports a receptionist's spans with the JavaScript SDK's stock OTLP/HTTP trace exporter, then again.
//
//   node export_spans.mjs <json|protobuf> [scenario]
//
// The exporter is built with no options: it reads the endpoint and the key
// from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and OTEL_EXPORTER_OTLP_HEADERS
// (and OTEL_EXPORTER_OTLP_COMPRESSION), as an application's would. The spans
// go through a BatchSpanProcessor and a forced flush, then the same finished
// spans are exported once more, as an exporter's retry would send them. The
// last line of stdout is JSON: each span as sent (ids, times in nanoseconds,
// status, attributes) and the result of every export; the exit status is
// non-zero when an export failed.

import { readFileSync } from "node:fs";

import { SpanStatusCode, context, trace } from "@opentelemetry/api";
import { OTLPTraceExporter as JsonExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as ProtobufExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";

// Placed in every place that carries message content; the service must store and log it nowhere.
const CANARY = "canary-5d81e2-node-message-content";
const START_S = 1_773_900_000; // 2026-03-19 06:00:00 UTC
const SUCCESS = 0; // ExportResultCode.SUCCESS
const RESOURCE = { "service.name": "receptionist", "mlops.prompt_version": "v7-node" };

// Each call is one chat turn: an HTTP request span with the model call inside it.
const SCENARIOS = {
  receptionist: [
    {
      model: "gpt-4o-mini", provider: "openai", latencyNs: 1_843_250_000, input: 1200, output: 300,
      cacheRead: 256, reasoning: 64, conversation: "conv-node-1", intent: "booking",
    },
    {
      model: "gpt-4o-mini", provider: "openai", latencyNs: 912_400_000, input: 800, output: 150,
      conversation: "conv-node-1", intent: "booking", booked: true,
    },
    {
      // Anthropic counts input without the tokens read from and written to the cache.
      model: "claude-3-5-haiku-20241022", provider: "anthropic", latencyNs: 2_310_000_000, input: 300, output: 90,
      cacheRead: 2000, cacheWrite: 500, conversation: "conv-node-2", intent: "hours",
    },
    {
      model: "gpt-4o-mini", provider: "openai", latencyNs: 20_000_000_000, conversation: "conv-node-2",
      error: "RateLimitError",
    },
  ],
};

function fail(message) {
  process.stderr.write(`export_spans: ${message}\n`);
  process.exit(2);
}

// Times are nanoseconds after START_S: small enough for a JavaScript number to hold exactly.
function hrTime(ns) {
  return [START_S + Math.floor(ns / 1e9), ns % 1e9];
}

function nanos([seconds, ns]) {
  return (BigInt(seconds) * 1_000_000_000n + BigInt(ns)).toString();
}

function genAiAttributes(call) {
  const message = (role) => JSON.stringify([{ role, parts: [{ type: "text", content: CANARY }] }]);
  const attributes = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": call.provider,
    "gen_ai.request.model": call.model,
    "gen_ai.response.model": call.model,
    "gen_ai.conversation.id": call.conversation,
    "gen_ai.input.messages": message("user"),
    "gen_ai.output.messages": message("assistant"),
    "gen_ai.system_instructions": CANARY,
    "mlops.appointment_booked": Boolean(call.booked),
  };
  const optional = {
    "gen_ai.usage.input_tokens": call.input,
    "gen_ai.usage.output_tokens": call.output,
    "gen_ai.usage.cache_read.input_tokens": call.cacheRead,
    "gen_ai.usage.cache_creation.input_tokens": call.cacheWrite,
    "gen_ai.usage.reasoning.output_tokens": call.reasoning,
    "mlops.intent": call.intent,
    "error.type": call.error,
  };
  for (const [name, value] of Object.entries(optional)) {
    if (value !== undefined) attributes[name] = value;
  }
  return attributes;
}

function makeSpans(tracer, calls) {
  let at = 0;
  for (const call of calls) {
    const request = tracer.startSpan("POST /api/chat", {
      startTime: hrTime(at),
      attributes: { "http.request.method": "POST", "http.route": "/api/chat" },
    });
    const parent = trace.setSpan(context.active(), request);
    const start = at + 3_000_000;
    const span = tracer.startSpan(`chat ${call.model}`, { startTime: hrTime(start), attributes: genAiAttributes(call) }, parent);
    span.addEvent("gen_ai.client.inference.operation.details", { "gen_ai.input.messages": CANARY }, hrTime(start + 1_000_000));
    if (call.error) span.setStatus({ code: SpanStatusCode.ERROR, message: `${call.error}: ${CANARY}` });
    span.end(hrTime(start + call.latencyNs));
    request.end(hrTime(start + call.latencyNs + 2_000_000));
    at += 60e9;
  }
}

function sent(span) {
  const { traceId, spanId } = span.spanContext();
  return {
    traceId,
    spanId,
    parentSpanId: span.parentSpanContext?.spanId ?? null,
    name: span.name,
    startTimeUnixNano: nanos(span.startTime),
    endTimeUnixNano: nanos(span.endTime),
    status: { code: span.status.code, message: span.status.message ?? "" },
    attributes: span.attributes,
  };
}

function version(name) {
  const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(url, "utf8")).version;
}

async function main() {
  const [encoding, scenario = "receptionist"] = process.argv.slice(2);
  const Exporter = { json: JsonExporter, protobuf: ProtobufExporter }[encoding];
  if (!Exporter) fail(`the encoding must be json or protobuf, not ${JSON.stringify(encoding)}`);
  if (!SCENARIOS[scenario]) fail(`no scenario ${JSON.stringify(scenario)}; there are ${Object.keys(SCENARIOS)}`);
  for (const name of ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS"]) {
    if (!process.env[name]) fail(`${name} is not set`);
  }

  const stock = new Exporter(); // configured by the environment alone
  const results = [];
  // Observes each export's result; the stock exporter does all the work.
  const observed = {
    export(spans, done) {
      stock.export(spans, (result) => {
        results.push({ spans: spans.length, code: result.code, error: result.error ? String(result.error) : null });
        done(result);
      });
    },
    forceFlush: () => stock.forceFlush(),
    shutdown: () => stock.shutdown(),
  };
  const finished = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes(RESOURCE),
    spanProcessors: [new SimpleSpanProcessor(finished), new BatchSpanProcessor(observed)],
  });
  makeSpans(provider.getTracer("receptionist.chat"), SCENARIOS[scenario]);
  await provider.forceFlush();

  const spans = finished.getFinishedSpans();
  await new Promise((resolve) => observed.export(spans, resolve)); // the retry of the same spans
  await provider.shutdown();

  process.stdout.write(JSON.stringify({
    encoding,
    scenario,
    node: process.version,
    exporter: version(encoding === "json" ? "@opentelemetry/exporter-trace-otlp-http" : "@opentelemetry/exporter-trace-otlp-proto"),
    exports: results,
    resource: RESOURCE,
    spans: spans.map(sent),
  }) + "\n");
  if (results.length < 2 || results.some((result) => result.code !== SUCCESS)) process.exit(1);
}

// Bounded: a hung export must not hang the test that runs this.
setTimeout(() => fail("still exporting after 60 s"), 60_000).unref();
await main();
