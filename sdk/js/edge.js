// edge.js: helpers for writing edge functions in JavaScript.
//
// A function is an ES module that exports `handle(req)` and returns a Response:
//
//     import { Response } from "edge";
//     export function handle(req) {
//       return Response.text("Hello from JavaScript!\n");
//     }
//
// `handle` may be async and may return a Web `Response` instead. Code written for Cloudflare
// Workers (`export default { fetch }`, or a `WorkerEntrypoint` class), Spin
// (`handleRequest(request)`, `handler(req, res)`) or a service worker
// (`addEventListener("fetch", ...)`) works too: web.js and spin-sdk.js give it the requests it
// expects (wrapModule below picks the shape).
//
// `edge build` bundles the module with this file (esbuild) behind an entry that exports the WIT
// interface `edge:function/handler@0.1.0`, then componentize-js turns the bundle into a component.
// The WIT imports below are provided by the host; esbuild leaves them external.

import { write as logWrite } from "edge:function/log@0.1.0";
import { get as configGet } from "edge:function/config@0.1.0";
import { serveHandler, spinRequest, spinWebRequest } from "./spin-sdk.js";
import {
  ExecutionContext, FetchEvent, WebResponse, env, fetchListeners, startRequestClock, trapNow,
  webRequest,
} from "./web.js";
import { lifetime, resetTimers, timersIdle } from "./timers.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// The WIT carries bodies as strings with one code point (U+0000..U+00FF) per byte, see
// `type body` in function.wit. TextDecoder's "latin1" is windows-1252, so convert by hand.
// btoa reads exactly such a string and fromBase64 is native too: a loop over the characters
// runs in the interpreter (componentize-js has no JIT) at ~0.2 µs a byte, which put a 300 KB
// request body over the default 100 ms deadline.
export function latin1ToBytes(text) {
  return Uint8Array.fromBase64(btoa(text));
}

function bytesToLatin1(bytes) {
  // Chunked: fromCharCode.apply with a huge argument list overflows the stack.
  let out = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    out += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
  }
  return out;
}

export function toBytes(body) {
  if (body === undefined || body === null) return new Uint8Array(0);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) {
    return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  }
  return encoder.encode(String(body));
}

// Headers as the WIT has them: ordered [name, value] pairs, names lower-case. Accepts a plain
// object or anything that iterates pairs: an array, a Map, a fetch `Headers` (whose own
// properties are empty, so reading it as an object dropped every header).
function toHeaderList(headers) {
  if (!headers) return [];
  const pairs =
    typeof headers[Symbol.iterator] === "function" ? Array.from(headers) : Object.entries(headers);
  return pairs.map(([name, value]) => [String(name).toLowerCase(), String(value)]);
}

// The request's headers: the WIT's [name, value] pairs, in order, plus the two lookups code
// written for the fetch API calls on `request.headers`.
class HeaderList extends Array {
  // map/filter/slice of it give plain arrays.
  static get [Symbol.species]() {
    return Array;
  }

  // Every value of `name` joined with ", " (as fetch's Headers.get), or null.
  get(name) {
    const key = String(name).toLowerCase();
    const values = this.filter(([n]) => n === key).map(([, v]) => v);
    return values.length ? values.join(", ") : null;
  }

  has(name) {
    const key = String(name).toLowerCase();
    return this.some(([n]) => n === key);
  }
}

// The request as handed to `handle`, over the raw WIT record.
export class Request {
  constructor(raw) {
    this.raw = raw;
    this.method = raw.method;
    this.url = raw.url;
    this.headers = HeaderList.from(raw.headers);
    this.clientIp = raw.clientIp;
    this.context = raw.context;
  }

  // Body bytes, converted on first use.
  get body() {
    if (this._body === undefined) this._body = latin1ToBytes(this.raw.body);
    return this._body;
  }

  get region() {
    return this.context.region;
  }

  get nodeId() {
    return this.context.nodeId;
  }

  get requestId() {
    return this.context.requestId;
  }

  // Optional fields of the WIT `geo` record arrive as undefined; normalised to null here so
  // that JSON.stringify keeps the keys.
  get geo() {
    const g = this.context.geo;
    const opt = (v) => (v === undefined ? null : v);
    return {
      country: opt(g.country),
      continent: opt(g.continent),
      city: opt(g.city),
      latitude: opt(g.latitude),
      longitude: opt(g.longitude),
    };
  }

  // First value of a header (case-insensitive), or null.
  header(name) {
    const key = name.toLowerCase();
    const hit = this.headers.find(([n]) => n === key);
    return hit ? hit[1] : null;
  }

  // Every value of a header, in order.
  headerAll(name) {
    const key = name.toLowerCase();
    return this.headers.filter(([n]) => n === key).map(([, v]) => v);
  }

  text() {
    return decoder.decode(this.body);
  }

  json() {
    return JSON.parse(this.text());
  }
}

export class Response {
  constructor(body, { status = 200, headers = [] } = {}) {
    this.status = status;
    this.headers = toHeaderList(headers);
    this.body = toBytes(body);
  }

  static text(body, { status = 200, headers = [] } = {}) {
    const list = toHeaderList(headers);
    if (!list.some(([n]) => n === "content-type")) {
      list.push(["content-type", "text/plain; charset=utf-8"]);
    }
    return new Response(body, { status, headers: list });
  }

  static json(value, { status = 200, headers = [] } = {}) {
    const list = toHeaderList(headers);
    if (!list.some(([n]) => n === "content-type")) {
      list.push(["content-type", "application/json"]);
    }
    return new Response(JSON.stringify(value), { status, headers: list });
  }
}

// The function's own lines never start with NUL: the SDK's marks for the node do
// (edge/sandbox/uncaught.py, edge/sandbox/awaiting.py), and a client's text that a function
// logs must not pass for one.
function own(text) {
  return text.charCodeAt(0) === 0 ? `\ufffd${text.slice(1)}` : text;
}

function level(name) {
  return (message) => logWrite(name, own(String(message)));
}

export const log = {
  trace: level("trace"),
  debug: level("debug"),
  info: level("info"),
  warn: level("warn"),
  error: level("error"),
};

// console.* as in Workers: a line in the function's log. componentize-js runs without stdio,
// which dropped it. Only once a request runs: the module's top level runs at build time, when
// there is no host to log to (a call there is dropped, as before). Never false again: work
// left running after the handler answered (waitUntil's) logs too.
let inRequest = false;

function formatArg(value) {
  if (typeof value === "string") return value;
  if (value instanceof Error) {
    return value.stack ? `${value}\n${value.stack.trimEnd()}` : String(value);
  }
  try {
    const json = JSON.stringify(value);
    return json === undefined ? String(value) : json;
  } catch {
    return String(value); // a cycle, a BigInt
  }
}

// Prototypes whose toString says nothing about the value: an object with only these is
// written as formatArg does under %s, as Node inspects it rather than calling toString.
const PLAIN_TO_STRING = new Set([
  Object.prototype, Array.prototype, Error.prototype, Date.prototype, RegExp.prototype,
  Function.prototype,
]);

function hasOwnToString(value) {
  for (let p = value; p !== null && !PLAIN_TO_STRING.has(p); p = Object.getPrototypeOf(p)) {
    if (Object.hasOwn(p, "toString")) return true;
  }
  return false;
}

function numberText(n) {
  return Object.is(n, -0) ? "-0" : String(n);
}

// One printf-style conversion of util.format, for the argument `value`.
const SPECIFIERS = {
  s: (v) => {
    if (typeof v === "bigint") return `${v}n`;
    if (typeof v === "number") return numberText(v);
    if (typeof v === "symbol") return String(v);
    if (v !== null && typeof v === "object" && !hasOwnToString(v)) return formatArg(v);
    return String(v);
  },
  d: (v) => (typeof v === "bigint" ? `${v}n` : typeof v === "symbol" ? "NaN" : numberText(Number(v))),
  i: (v) => (typeof v === "bigint" ? `${v}n` : typeof v === "symbol" ? "NaN" : numberText(parseInt(v))),
  f: (v) => (typeof v === "symbol" ? "NaN" : numberText(parseFloat(v))),
  j: (v) => {
    try {
      return String(JSON.stringify(v));
    } catch {
      return "[Circular]";
    }
  },
  o: formatArg,
  O: formatArg,
  c: () => "", // CSS: no styling in a log line, the argument is consumed
};

// The text of console.log(...args), as Node's util.format makes it: specifiers in a first
// string argument take the arguments in turn (one without an argument left stays as it is,
// %% is % while any is left), and the rest follow, space-separated.
function formatArgs(args) {
  if (args.length === 0) return "";
  const [first] = args;
  if (typeof first !== "string" || args.length === 1 || !first.includes("%")) {
    return args.map(formatArg).join(" "); // most lines: no character-by-character scan
  }
  let out = "";
  let next = 1;
  let from = 0;
  for (let i = first.indexOf("%"); i !== -1 && i < first.length - 1; ) {
    const spec = first[i + 1];
    if (spec === "%") {
      out += first.slice(from, i + 1);
      from = i + 2;
    } else if (next < args.length && Object.hasOwn(SPECIFIERS, spec)) {
      out += first.slice(from, i) + SPECIFIERS[spec](args[next]);
      next += 1;
      from = i + 2;
    }
    i = first.indexOf("%", i + 2); // the character after a % is never a specifier's start
  }
  out += first.slice(from);
  const rest = args.slice(next).map(formatArg);
  return [out, ...rest].join(" ");
}

// Per-request console state: an instance reused for the next request (`[instance] policy =
// "reuse"`) starts with no counts and no open group, as a fresh one would.
const counts = new Map();
let groupDepth = 0;

function resetConsole() {
  counts.clear();
  timers.clear();
  groupDepth = 0;
}

// A console line in the log: each of its lines indented two spaces per open group, as Node
// indents them.
function consoleWrite(levelName, text) {
  if (!inRequest) return;
  const indent = "  ".repeat(groupDepth);
  logWrite(levelName, own(indent ? indent + text.replaceAll("\n", `\n${indent}`) : text));
}

for (const [method, levelName] of [
  ["log", "info"], ["info", "info"], ["debug", "debug"], ["warn", "warn"], ["error", "error"],
  ["dirxml", "info"],
]) {
  globalThis.console[method] = (...args) => consoleWrite(levelName, formatArgs(args));
}

// Node's and Workers' wording: "Assertion failed" alone, or before the data.
globalThis.console.assert = (condition, ...data) => {
  if (condition) return;
  if (typeof data[0] === "string") data[0] = `Assertion failed: ${data[0]}`;
  else data.unshift("Assertion failed");
  consoleWrite("error", formatArgs(data));
};

globalThis.console.count = (label = "default") => {
  const key = String(label);
  const n = (counts.get(key) ?? 0) + 1;
  counts.set(key, n);
  consoleWrite("info", `${key}: ${n}`);
};

globalThis.console.countReset = (label = "default") => {
  const key = String(label);
  if (counts.has(key)) counts.set(key, 0);
  else consoleWrite("warn", `Count for '${key}' does not exist`);
};

// The object only, as console.dir takes its options second.
globalThis.console.dir = (value) => consoleWrite("info", formatArg(value));

globalThis.console.group = (...label) => {
  if (label.length > 0) consoleWrite("info", formatArgs(label));
  groupDepth += 1;
};
globalThis.console.groupCollapsed = globalThis.console.group;
globalThis.console.groupEnd = () => {
  groupDepth = Math.max(0, groupDepth - 1);
};

// "Trace: message" and the stack where console.trace was called, as Node writes it; the
// SDK's own frame left out.
globalThis.console.trace = (...data) => {
  const message = formatArgs(data);
  const stack = new Error().stack ?? "";
  const frames = stack.trimEnd().split("\n").slice(1).filter(Boolean);
  const head = message ? `Trace: ${message}` : "Trace";
  consoleWrite("trace", [head, ...frames.map((frame) => `    at ${frame}`)].join("\n"));
};

// console.table: a text table as Node draws it, a row a line, a cell the value as
// console.log writes it (strings quoted). Data that is not an object is logged as is.
function tableCell(value) {
  return typeof value === "string" ? JSON.stringify(value) : formatArg(value);
}

function tableText(data, columns) {
  const rows = data instanceof Map ? [...data] : data instanceof Set ? [...data].entries() :
    Object.entries(data);
  const keys = [];
  let values = false;
  const body = [];
  for (const [index, row] of rows) {
    const cells = new Map();
    if (row !== null && typeof row === "object") {
      for (const [key, value] of Object.entries(row)) {
        if (columns && !columns.includes(key)) continue;
        if (!keys.includes(key)) keys.push(key);
        cells.set(key, tableCell(value));
      }
    } else {
      values = true;
      cells.set(null, tableCell(row));
    }
    body.push([data instanceof Map ? tableCell(index) : String(index), cells]);
  }
  const header = ["(index)", ...(columns ?? keys), ...(values ? ["Values"] : [])];
  const lines = body.map(([index, cells]) => [
    index, ...(columns ?? keys).map((key) => cells.get(key) ?? ""),
    ...(values ? [cells.get(null) ?? ""] : []),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const rule = (left, mid, right) => left + widths.map((w) => "─".repeat(w + 2)).join(mid) + right;
  const row = (cells) => `│ ${cells.map((c, i) => c.padEnd(widths[i])).join(" │ ")} │`;
  return [
    rule("┌", "┬", "┐"), row(header), rule("├", "┼", "┤"), ...lines.map(row), rule("└", "┴", "┘"),
  ].join("\n");
}

globalThis.console.table = (data, columns) => {
  if (data === null || typeof data !== "object") {
    consoleWrite("info", formatArg(data));
    return;
  }
  consoleWrite("info", tableText(data, Array.isArray(columns) ? columns.map(String) : null));
};

// console.time family on performance.now(): with the wall clock frozen (no `wall_clock` grant)
// no time passes in a function and a timer reads 0ms, a line as Workers writes it. A label
// never started is Node's warning.
const timers = new Map();
function timer(ends) {
  return (label = "default", ...data) => {
    const key = String(label);
    if (!timers.has(key)) {
      consoleWrite("warn", `Warning: No such label '${key}' for console.time${ends ? "End" : "Log"}()`);
      return;
    }
    const ms = performance.now() - timers.get(key);
    if (ends) timers.delete(key);
    const text = [`${key}: ${ms}ms`, ...(ends ? [] : data.map(formatArg))].join(" ");
    consoleWrite("info", text);
  };
}
globalThis.console.time = (label = "default") => {
  timers.set(String(label), performance.now());
};
globalThis.console.timeLog = timer(false);
globalThis.console.timeEnd = timer(true);

export const config = {
  // The value for `key` from edge.toml's [config], or `fallback` when unset.
  get(key, fallback = null) {
    const value = configGet(key);
    return value === undefined || value === null ? fallback : value;
  },
};

// The shapes of module a function may be, as the build error names them.
const SHAPES =
  "`export function handle(req)` (edge), `export default { fetch(request, env, ctx) }` or " +
  "`export default class extends WorkerEntrypoint { fetch(request) }` (Cloudflare Workers), " +
  "`export async function handleRequest(request)` or `export async function handler(req, res)` " +
  "(Spin) or " +
  "`addEventListener(\"fetch\", (event) => event.respondWith(...))` " +
  "(service worker: Fastly Compute, Spin, older Workers)";

const HANDLE = "handle(req)";
const SPIN = "handleRequest(request)";

// Each shape as one call: (raw WIT request, ctx) -> what the user's code returned, maybe a
// Promise. `handle` comes first, so a module may keep both while it is being ported.
function pickServe(mod) {
  if (typeof mod.handle === "function") {
    return { who: HANDLE, serve: (raw) => mod.handle(new Request(raw)) };
  }
  const worker = mod.default;
  if (typeof worker === "function" && typeof worker.prototype?.fetch === "function") {
    // A class (Workers' WorkerEntrypoint, from "cloudflare:workers"): one per request.
    return {
      who: "fetch(request)",
      serve: (raw, ctx) => new worker(ctx, env).fetch(webRequest(raw)),
    };
  }
  if (worker && typeof worker.fetch === "function") {
    return {
      who: "fetch(request, env, ctx)",
      serve: (raw, ctx) => worker.fetch(webRequest(raw), env, ctx),
    };
  }
  if (typeof mod.handleRequest === "function") {
    return { who: SPIN, serve: (raw) => mod.handleRequest(spinRequest(raw)) };
  }
  // Spin v2's: two parameters, so that a helper of that common name is not taken for it.
  if (typeof mod.handler === "function" && mod.handler.length === 2) {
    return {
      who: "handler(req, res)",
      serve: (raw) => serveHandler(mod.handler, spinWebRequest(raw)),
    };
  }
  if (fetchListeners.length > 0) {
    return { who: "event.respondWith()", serve: dispatchFetch };
  }
  throw new Error(`${EXPORTS_NONE} ${SHAPES}`);
}

// The marker edge/build/js.py finds in componentize-js's output to name the failure.
const EXPORTS_NONE = "edge: the function module exports none of the accepted shapes:";

function dispatchFetch(raw, ctx) {
  const event = new FetchEvent(raw, ctx);
  for (const listener of fetchListeners) {
    if (typeof listener === "function") listener.call(globalThis, event);
    else listener.handleEvent(event);
    if (event.responded) return event.response;
  }
  throw new TypeError("no fetch listener called event.respondWith()");
}

// The WIT response for the SDK's Response.
function witOf(resp) {
  return { status: resp.status, headers: resp.headers, body: bytesToLatin1(resp.body) };
}

// The WIT response for what the handler gave: the SDK's Response, a Web `Response` (its body
// read whole, a stream included), a string (`handle` only, as before) or Spin's plain
// `{ status, headers, body }` (`handleRequest` only).
async function toWit(resp, who) {
  if (typeof resp === "string" && who === HANDLE) resp = Response.text(resp);
  if (who === SPIN && isSpinResponse(resp)) {
    resp = new Response(resp.body, { status: resp.status, headers: resp.headers ?? [] });
  }
  if (resp instanceof Response) return witOf(resp);
  if (resp instanceof WebResponse) {
    const body = new Uint8Array(await resp.arrayBuffer());
    return { status: resp.status, headers: toHeaderList(resp.headers), body: bytesToLatin1(body) };
  }
  const wanted = who === SPIN ? "a Response or { status, headers, body }" : "a Response";
  throw new TypeError(`${who} must return ${wanted}, got ${describe(resp)}`);
}

function isSpinResponse(value) {
  return value !== null && typeof value === "object" && Number.isInteger(value.status) &&
    !(value instanceof Response) && !(value instanceof WebResponse);
}

function waitUntilRejected(reason) {
  logWrite("error", own(`waitUntil promise rejected: ${formatArg(reason)}`));
}

// The node's marks around waitUntil's promises (edge/sandbox/awaiting.py): the call returning
// between them, with an answer, is a request that ended with one still pending, which can
// never settle then, and the node logs a warning. The SDK cannot: componentize-js returns
// once nothing is left to run, and no code of the SDK runs after that. As for the handler's
// Promise, the first mark is written only once a promise has been pending UNMARKED_HOPS hops,
// and the second once every promise given has settled.
const WAIT_UNTIL_PENDING_MARK = "\0edge:wait-until-pending\0";
const WAIT_UNTIL_SETTLED_MARK = "\0edge:wait-until-settled\0";

function waitUntilWatch() {
  const state = { pending: 0, watching: false, marked: false };
  const settled = () => {
    state.pending -= 1;
    lifetime.extending -= 1;
    if (state.pending === 0 && state.marked) {
      state.marked = false;
      logWrite("trace", WAIT_UNTIL_SETTLED_MARK);
    }
  };
  return (promise) => {
    state.pending += 1;
    lifetime.extending += 1;
    Promise.resolve(promise).then(settled, (reason) => {
      waitUntilRejected(reason);
      settled();
    });
    if (!state.watching && !state.marked) {
      state.watching = true;
      watchWaitUntil(state, UNMARKED_HOPS);
    }
  };
}

function watchWaitUntil(state, hops) {
  if (state.pending === 0) {
    state.watching = false;
  } else if (hops > 0) {
    queueMicrotask(() => watchWaitUntil(state, hops - 1));
  } else {
    state.watching = false;
    state.marked = true;
    logWrite("trace", WAIT_UNTIL_PENDING_MARK);
  }
}

// An exception that ends the request: reported, then a trap at once, before any other queued
// work can call the host (the node believes a report only when the trap comes next, and
// answers 500 `function_exception`).
function fail(e) {
  reportUncaught(e);
  trapNow();
  throw e; // not reached while the build disables http (trapNow calls the engine's fetch)
}

// A timer callback's exception ends the request as any uncaught one would, unless the answer
// has left: then it is logged, as a rejected waitUntil promise is, and the answer stands.
lifetime.threw = (e) => {
  if (!lifetime.answered) fail(e);
  logWrite("error", own(`Uncaught in a timer after the answer: ${formatArg(e)}`));
};

// The node's marks around the handler's Promise (edge/sandbox/awaiting.py): a trap between
// them, with no exception reported, is that Promise never settling. componentize-js traps when
// its event loop has nothing left to run and the Promise is still pending. A mark is a host
// call (~27 µs; a microtask hop is < 1 µs), so the wait is marked only once it has lasted
// UNMARKED_HOPS hops: most handlers answer sooner and write none. The watch's own hops keep
// the loop from running dry until then, so no unmarked wait can end in that trap.
const AWAITING_MARK = "\0edge:awaiting\0";
const ANSWERED_MARK = "\0edge:answered\0";
const UNMARKED_HOPS = 64;

function watch(wait, hops) {
  if (wait.answered) return;
  if (hops > 0) {
    queueMicrotask(() => watch(wait, hops - 1));
    return;
  }
  wait.marked = true;
  logWrite("trace", AWAITING_MARK);
}

async function finish(result, who) {
  const wait = { answered: false, marked: false };
  watch(wait, UNMARKED_HOPS);
  let out;
  try {
    out = await toWit(await result, who);
  } catch (e) {
    fail(e);
  }
  wait.answered = true;
  lifetime.answered = true;
  if (wait.marked) logWrite("trace", ANSWERED_MARK);
  // waitUntil's work may wait on timers, which run only until this call's Promise settles.
  if (lifetime.extending > 0) await timersIdle();
  return out;
}

// Used by the generated build entry: adapts the module to the WIT export. The export may
// return a Promise: componentize-js runs the engine's event loop within the one export call
// until nothing is left to run, so `async` handlers work, and so does waitUntil's work. A
// synchronous `handle` answering with the SDK's Response returns at once, as before, without a
// Promise for componentize-js to drive.
export function wrapModule(mod) {
  const { who, serve } = pickServe(mod);
  return {
    handle(raw) {
      inRequest = true;
      startRequestClock();
      resetConsole();
      resetTimers();
      try {
        const ctx = new ExecutionContext(waitUntilWatch());
        let resp = serve(raw, ctx);
        if (typeof resp === "string" && who === HANDLE) resp = Response.text(resp);
        if (resp instanceof Response && ctx.waiting === 0) {
          lifetime.answered = true; // timers the handler set are dropped
          return witOf(resp);
        }
        return finish(resp, who);
      } catch (e) {
        fail(e);
      }
    },
  };
}

function describe(value) {
  if (value === null) return "null";
  if (typeof value !== "object") return typeof value;
  return value.constructor ? value.constructor.name : "object";
}

// The node's mark for a report of an uncaught exception (edge/sandbox/uncaught.py): it must be
// the last host call before the trap.
const REPORT_MARK = "\0edge:uncaught-exception\0";

// componentize-js runs without stdio, so an exception that ends the request would otherwise
// leave nothing in the function's log. Reported so, the node logs it as one error line (the
// message, then the stack) and answers 500 `function_exception` naming its type. The stack
// names lines of the bundle esbuild made; the node maps them back to the source files with the
// source map the build put in the component (edge/sandbox/stackmap.py).
function reportUncaught(e) {
  const isError = e instanceof Error;
  let type = describe(e);
  let text = "";
  let first = `Uncaught ${type}`;
  try {
    // A subclass that sets no `name` (class PaymentError extends Error {}) is named by its
    // constructor; a set name (TypeError, or the author's) wins.
    if (isError && typeof e.name === "string" && e.name && e.name !== "Error") type = e.name;
    text = isError ? String(e.message) : String(e);
    first = `Uncaught ${type}${text || !isError ? ": " : ""}${text}`;
  } catch {
    // a getter or toString that throws: the type still says what happened
  }
  const stack = isError && typeof e.stack === "string" ? e.stack.trimEnd() : "";
  const frames = stack ? stack.split("\n").map((frame) => `    at ${frame}`) : [];
  const report = [first, ...frames].join("\n");
  const clean = (s) => s.replaceAll("\0", "\ufffd");
  logWrite("error", REPORT_MARK + [clean(type), clean(text), report].join("\0"));
}
