/**
 * Which arm of an A/B experiment a conversation is in, from its
 * conversation_id alone. The rule, the same in the Python client and in the
 * service (which checks the observed split with it):
 *
 *     u64       = first 8 bytes of SHA-256(UTF-8(experiment + "\u001f" + conversationId)), big-endian
 *     threshold = floor(split * 2**53) * 2**11
 *     variant   = variants[0] if u64 < threshold, else variants[1]
 *
 * `split * 2**53` is exact for a double and below 2**53, so the threshold is
 * the same integer here as in Python; u64 and the threshold are compared as
 * BigInts. ../variant_assignment_vectors.json holds the vectors that every
 * implementation checks.
 *
 * SHA-256 is computed here rather than with `node:crypto` or Web Crypto:
 * Web Crypto's digest is asynchronous only, and the package imports no Node
 * built-in (it runs on fetch, TextEncoder and globalThis.crypto), so an Edge
 * route or a browser bundle can import it. The tests compare it with
 * node:crypto on a thousand inputs of every length up to 300 bytes, ASCII and
 * not; 100,000 assignments take about 0.5 s in Node 20.
 */

const SEPARATOR = "\u001f"; // not in an experiment's name, so name + id splits one way only
const encoder = new TextEncoder();

/**
 * The variant this conversation gets in this experiment: always the same for
 * the same four arguments.
 *
 * `variants` is the pair [a, b] and `split` the share of conversations that
 * get a, 0 < split < 1. The arm goes by position: listing the variants the
 * other way round gives every conversation the other one. Raising the split
 * only moves conversations from b to a. Another experiment's name gives an
 * assignment independent of this one's.
 *
 * Throws a TypeError for arguments of the wrong type and a RangeError for an
 * empty name or id, a name containing U+001F, a lone surrogate (not UTF-8
 * text), two equal or empty variants, or a split outside (0, 1).
 */
export function assignVariant(
  experiment: string,
  conversationId: string,
  variants: readonly [string, string] | readonly string[],
  split = 0.5,
): string {
  const [first, second] = checkedVariants(variants);
  const threshold = thresholdOf(split);
  const message = checkedName(experiment) + SEPARATOR + text("conversationId", conversationId);
  if (/\p{Cs}/u.test(message)) {
    // TextEncoder would quietly write U+FFFD where Python refuses: refuse here too.
    throw new RangeError("assignVariant: experiment and conversationId must be valid Unicode text (a lone surrogate)");
  }
  const digest = sha256(encoder.encode(message));
  const u64 = new DataView(digest.buffer).getBigUint64(0, false);
  return u64 < threshold ? first : second;
}

/**
 * An experiment as the chat app configures it, checked once when it is made:
 *
 *     const greeting = new Experiment("greeting-2025-06", ["v6", "v7"], 0.5);
 *     const promptVersion = greeting.variantFor(conversationId);
 */
export class Experiment {
  readonly name: string;
  readonly variants: readonly [string, string];
  readonly split: number;

  constructor(name: string, variants: readonly [string, string] | readonly string[], split = 0.5) {
    this.name = checkedName(name);
    this.variants = checkedVariants(variants);
    thresholdOf(split);
    this.split = split;
    Object.freeze(this);
  }

  variantFor(conversationId: string): string {
    return assignVariant(this.name, conversationId, this.variants, this.split);
  }
}

function text(name: string, value: unknown): string {
  if (typeof value !== "string") throw new TypeError(`assignVariant: ${name} must be a string, not ${typeOf(value)}`);
  if (!value) throw new RangeError(`assignVariant: ${name} must not be empty`);
  return value;
}

function checkedName(experiment: unknown): string {
  const name = text("experiment", experiment);
  if (name.includes(SEPARATOR)) {
    throw new RangeError("assignVariant: the experiment name must not contain U+001F, the separator from the conversationId");
  }
  return name;
}

function checkedVariants(variants: unknown): readonly [string, string] {
  if (!Array.isArray(variants)) throw new TypeError(`assignVariant: variants must be a pair of strings, not ${typeOf(variants)}`);
  if (variants.length !== 2) throw new RangeError(`assignVariant: variants must be exactly two, got ${variants.length}`);
  const pair = [text("variants", variants[0]), text("variants", variants[1])] as const;
  if (pair[0] === pair[1]) throw new RangeError(`assignVariant: variants must differ, both are ${JSON.stringify(pair[0])}`);
  return Object.freeze(pair);
}

function thresholdOf(split: unknown): bigint {
  if (typeof split !== "number") throw new TypeError(`assignVariant: split must be a number, not ${typeOf(split)}`);
  if (!(Number.isFinite(split) && split > 0 && split < 1)) {
    throw new RangeError(`assignVariant: split must be between 0 and 1 (the share of the first variant), got ${split}`);
  }
  return BigInt(Math.floor(split * 2 ** 53)) << 11n;
}

function typeOf(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "array" : typeof value;
}

// SHA-256 as FIPS 180-4 defines it. K: the first 32 bits of the fractional
// parts of the cube roots of the first 64 primes; H0: of the square roots of
// the first 8.
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const H0 = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

function rotr(x: number, n: number): number {
  return (x >>> n) | (x << (32 - n));
}

/** The SHA-256 digest of `data`, 32 bytes. */
function sha256(data: Uint8Array): Uint8Array {
  // Padding: 0x80, zeros, then the length in bits as 64 bits big-endian, to a multiple of 64 bytes.
  const blocks = new Uint8Array(Math.ceil((data.length + 9) / 64) * 64);
  blocks.set(data);
  blocks[data.length] = 0x80;
  const view = new DataView(blocks.buffer);
  view.setUint32(blocks.length - 8, Math.floor(data.length / 2 ** 29));
  view.setUint32(blocks.length - 4, (data.length * 8) >>> 0);

  const h = Uint32Array.from(H0);
  const w = new Uint32Array(64);
  for (let offset = 0; offset < blocks.length; offset += 64) {
    for (let t = 0; t < 16; t++) w[t] = view.getUint32(offset + 4 * t);
    for (let t = 16; t < 64; t++) {
      const x = w[t - 15]!;
      const y = w[t - 2]!;
      const s0 = rotr(x, 7) ^ rotr(x, 18) ^ (x >>> 3);
      const s1 = rotr(y, 17) ^ rotr(y, 19) ^ (y >>> 10);
      w[t] = w[t - 16]! + s0 + w[t - 7]! + s1; // a Uint32Array keeps the sum mod 2**32
    }
    let a = h[0]!, b = h[1]!, c = h[2]!, d = h[3]!, e = h[4]!, f = h[5]!, g = h[6]!, hh = h[7]!;
    for (let t = 0; t < 64; t++) {
      const t1 = (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[t]! + w[t]!) | 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    [a, b, c, d, e, f, g, hh].forEach((word, i) => {
      h[i] = h[i]! + word;
    });
  }
  const digest = new Uint8Array(32);
  const out = new DataView(digest.buffer);
  h.forEach((word, i) => out.setUint32(4 * i, word));
  return digest;
}
