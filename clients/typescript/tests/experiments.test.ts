// Assigning a conversation to an arm of an A/B experiment.
//
// The vectors in clients/variant_assignment_vectors.json were computed apart
// from this client (Python's hashlib and exact fractions); the Python client
// and the service check the same file, so all three put every conversation in
// the same arm.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { Experiment, assignVariant } from "mlops-chat-tracking";

interface Vector {
  experiment: string;
  conversation_id: string;
  variants: [string, string];
  split: number;
  variant: string;
  note: string;
}
interface Invalid {
  experiment: unknown;
  conversation_id: unknown;
  variants: unknown;
  split: unknown;
  note: string;
}

// build-test/tests/ -> the package -> clients/, where the vectors live beside both clients.
const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const shared = JSON.parse(readFileSync(resolve(packageDir, "..", "variant_assignment_vectors.json"), "utf8")) as {
  vectors: Vector[];
  invalid: Invalid[];
};
const conversations = Array.from({ length: 100_000 }, (_, i) => `synthetic-${i}`);

function withinBinomialTolerance(hits: number, n: number, p: number, sds = 4.5): boolean {
  return Math.abs(hits / n - p) < sds * Math.sqrt((p * (1 - p)) / n);
}

test("each shared vector gets its variant", () => {
  assert.ok(shared.vectors.length >= 50);
  for (const v of shared.vectors) {
    assert.equal(assignVariant(v.experiment, v.conversation_id, v.variants, v.split), v.variant, v.note);
  }
});

test("each shared invalid case is refused with a TypeError or a RangeError", () => {
  assert.ok(shared.invalid.length >= 10);
  for (const c of shared.invalid) {
    assert.throws(
      // The cases are wrong on purpose; the function checks its arguments at run time.
      () => assignVariant(c.experiment as string, c.conversation_id as string, c.variants as [string, string], c.split as number),
      (error: unknown) => (error instanceof TypeError || error instanceof RangeError) && error.message.startsWith("assignVariant: "),
      c.note,
    );
  }
});

test("the hash is SHA-256: node:crypto agrees at the 53 bits the rule reads, for inputs of every length to 300 bytes", () => {
  // For each input, the split exactly at its own top 53 bits must give b, and
  // one step above must give a; a wrong digest fails one of the two.
  for (let i = 0; i < 1000; i++) {
    const experiment = `exp-${i % 7}`;
    const length = i % 300;
    const conversationId = `c${randomBytes(length).toString("base64").slice(0, length)}${i % 2 ? "é💬" : ""}`;
    const u64 = createHash("sha256").update(`${experiment}\u001f${conversationId}`, "utf8").digest().readBigUInt64BE(0);
    const h53 = Number(u64 >> 11n);
    assert.equal(assignVariant(experiment, conversationId, ["a", "b"], h53 / 2 ** 53 || Number.MIN_VALUE), "b");
    if (h53 + 1 < 2 ** 53) assert.equal(assignVariant(experiment, conversationId, ["a", "b"], (h53 + 1) / 2 ** 53), "a");
  }
});

test("a split of 0.3 gives the first variant to 0.3 of conversations", () => {
  const hits = conversations.filter((id) => assignVariant("split-check", id, ["a", "b"], 0.3) === "a").length;
  assert.ok(withinBinomialTolerance(hits, conversations.length, 0.3), String(hits));
});

test("the default split is even", () => {
  const some = conversations.slice(0, 20_000);
  const hits = some.filter((id) => assignVariant("even-check", id, ["a", "b"]) === "a").length;
  assert.ok(withinBinomialTolerance(hits, some.length, 0.5), String(hits));
});

test("two experiments assign independently", () => {
  let agree = 0;
  let bothA = 0;
  for (const id of conversations) {
    const first = assignVariant("greeting-2025-06", id, ["a", "b"], 0.3);
    const second = assignVariant("kb-rollout-2025-06", id, ["a", "b"], 0.3);
    if (first === second) agree++;
    if (first === "a" && second === "a") bothA++;
  }
  assert.ok(withinBinomialTolerance(agree, conversations.length, 0.3 ** 2 + 0.7 ** 2), String(agree));
  assert.ok(withinBinomialTolerance(bothA, conversations.length, 0.3 ** 2), String(bothA));
});

test("listing the variants the other way round gives each conversation the other variant", () => {
  for (const id of conversations.slice(0, 2000)) {
    const forward = assignVariant("order-check", id, ["v6", "v7"]);
    const backward = assignVariant("order-check", id, ["v7", "v6"]);
    assert.notEqual(forward, backward, id);
  }
});

test("raising the split only moves conversations from the second variant to the first", () => {
  for (const id of conversations.slice(0, 5000)) {
    if (assignVariant("ramp", id, ["v7", "v6"], 0.1) === "v7") assert.equal(assignVariant("ramp", id, ["v7", "v6"], 0.5), "v7", id);
  }
});

test("it rejects a split that is not a finite number strictly between 0 and 1", () => {
  for (const split of [0, 1, -0.5, 2, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
    assert.throws(() => assignVariant("exp", "conv-1", ["a", "b"], split), { name: "RangeError", message: /split must be between 0 and 1/ });
  }
  assert.throws(() => assignVariant("exp", "conv-1", ["a", "b"], "0.5" as unknown as number), {
    name: "TypeError",
    message: /split must be a number/,
  });
});

test("it rejects bad arguments with a message naming them", () => {
  const cases: Array<[unknown, unknown, unknown, string, RegExp]> = [
    ["", "conv-1", ["a", "b"], "RangeError", /experiment must not be empty/],
    ["exp", "", ["a", "b"], "RangeError", /conversationId must not be empty/],
    ["exp", "conv-1", ["a", "a"], "RangeError", /variants must differ/],
    ["exp", "conv-1", ["a", "b", "c"], "RangeError", /exactly two/],
    ["exp", "conv-1", "ab", "TypeError", /pair of strings/],
    ["exp", null, ["a", "b"], "TypeError", /conversationId must be a string, not null/],
    ["e\u001fx", "conv-1", ["a", "b"], "RangeError", /U\+001F/],
    ["exp", "conv-\udc00", ["a", "b"], "RangeError", /valid Unicode/],
  ];
  for (const [experiment, conversationId, variants, name, message] of cases) {
    assert.throws(() => assignVariant(experiment as string, conversationId as string, variants as [string, string]), { name, message });
  }
});

test("an Experiment is checked when made and assigns as the function does", () => {
  const greeting = new Experiment("greeting-2025-06", ["v6", "v7"], 0.3);
  for (const id of conversations.slice(0, 500)) {
    assert.equal(greeting.variantFor(id), assignVariant("greeting-2025-06", id, ["v6", "v7"], 0.3));
  }
  assert.ok(Object.isFrozen(greeting) && Object.isFrozen(greeting.variants));
  assert.throws(() => new Experiment("greeting-2025-06", ["v6", "v7"], 1), /split/);
  assert.throws(() => new Experiment("greeting-2025-06", ["v6", "v6"]), /variants must differ/);
  assert.throws(() => new Experiment("", ["v6", "v7"]), /experiment must not be empty/);
});
