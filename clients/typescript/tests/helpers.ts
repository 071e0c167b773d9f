/** A stand-in for the service that the tests can make slow, failing or absent. */

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface Received {
  at: number;
  headers: IncomingMessage["headers"];
  events: Array<Record<string, unknown>>;
}

export interface Reply {
  status: number;
  headers?: Record<string, string>;
  body?: unknown;
  /** Answer only after this long (a slow service). */
  delayMs?: number;
}

export type Responder = (received: Received, index: number) => Reply | undefined;

export interface FakeService {
  url: string;
  port: number;
  requests: Received[];
  /** The knowledge-base version the fake answers per business (GET /api/knowledge-base/); others get 404. */
  kbVersions: Map<string, string>;
  /** The businesses whose version was asked for, in order. */
  kbLookups: string[];
  /** Every event_id received, in order, retries included. */
  ids(): string[];
  close(): Promise<void>;
}

/** The answer the real service gives when it stored every event. */
export function stored(events: Array<Record<string, unknown>>): Reply {
  return {
    status: 200,
    body: {
      status: "success",
      created: events.length,
      duplicates: 0,
      rejected: 0,
      results: events.map((event, index) => ({ index, event_id: event.event_id, status: "created", errors: {} })),
    },
  };
}

export async function startFake(responder: Responder = () => undefined, port = 0): Promise<FakeService> {
  const requests: Received[] = [];
  const kbVersions = new Map<string, string>();
  const kbLookups: string[] = [];
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (req.method === "GET") {
      const business = new URL(req.url ?? "/", "http://fake").searchParams.get("business_id") ?? "";
      kbLookups.push(business);
      const version = kbVersions.get(business);
      res.writeHead(version ? 200 : 404, { "Content-Type": "application/json" });
      res.end(JSON.stringify(version ? { version, business_id: business } : { error: "Not found", errors: {} }));
      return;
    }
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      let events: Array<Record<string, unknown>> = [];
      try {
        events = JSON.parse(Buffer.concat(chunks).toString("utf8")).events ?? [];
      } catch {
        events = [];
      }
      const received: Received = { at: Date.now(), headers: req.headers, events };
      requests.push(received);
      const reply = responder(received, requests.length - 1) ?? stored(events);
      const answer = () => {
        if (res.destroyed) return;
        res.writeHead(reply.status, { "Content-Type": "application/json", ...(reply.headers ?? {}) });
        res.end(JSON.stringify(reply.body ?? { error: "fake error", errors: {} }));
      };
      if (reply.delayMs) setTimeout(answer, reply.delayMs);
      else answer();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  const actual = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${actual}`,
    port: actual,
    requests,
    kbVersions,
    kbLookups,
    ids: () => requests.flatMap((received) => received.events.map((event) => String(event.event_id))),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A loopback port with nothing listening on it. */
export async function deadPort(): Promise<number> {
  const fake = await startFake();
  await fake.close();
  return fake.port;
}

export function reply(overrides: Partial<Record<string, unknown>> = {}): Record<string, unknown> & {
  business_id: string;
  response_time_ms: number;
  tokens_used: number;
} {
  return {
    business_id: "test-business",
    conversation_id: "conv-1",
    session_id: "session-1",
    response_time_ms: 1200,
    success_rate: 1,
    tokens_used: 150,
    api_cost_usd: 0.00003,
    model_name: "gemini-1.5-flash",
    intent_detected: "general",
    appointment_requested: false,
    human_handoff_requested: false,
    user_message_length: 45,
    ai_response_length: 120,
    response_type: "text",
    ...overrides,
  };
}
