// web.js: the Web-standard side of a request, for code written for Cloudflare Workers, Fastly
// Compute or Spin: a global `Request` (with Workers' `request.cf`), the `env` of config values,
// Workers' `ctx` and the service worker's FetchEvent (Spin's own shapes: spin-sdk.js).
// edge.js's wrapModule picks the module's shape and uses these.

import { get as configGet } from "edge:function/config@0.1.0";
import { latin1ToBytes } from "./edge.js";

// Kept before the user's module runs: it may define a `Request` or `Response` of its own.
export const WebRequest = globalThis.Request;
export const WebResponse = globalThis.Response;

// `addEventListener("fetch", ...)` runs at the module's top level, which componentize-js
// evaluates at build time (then snapshots): the listeners are kept here for every request.
// StarlingMonkey's own fetch-event dispatch is disabled in the build (DISABLED_FEATURES).
export const fetchListeners = [];
const engineAddEventListener = globalThis.addEventListener;
globalThis.addEventListener = function addEventListener(type, listener, options) {
  if (type === "fetch") {
    if (listener) fetchListeners.push(listener);
    return;
  }
  if (typeof engineAddEventListener === "function") {
    engineAddEventListener.call(globalThis, type, listener, options);
  }
};

// performance.now() counts from the request's start on Date.now(), the host's wall clock, frozen
// at that start unless edge.toml grants `wall_clock`: 0 then, as no time passes in a function
// (Workers' is frozen too). timeOrigin is that start, so timeOrigin + now() is Date.now().
let requestOrigin = 0;
export function startRequestClock() {
  requestOrigin = Date.now();
}
Object.defineProperty(performance, "now", {
  value: () => Date.now() - requestOrigin, configurable: true, writable: true,
});
Object.defineProperty(performance, "timeOrigin", { get: () => requestOrigin, configurable: true });

// Ends the request at once with a trap, nothing else run after it: the engine's fetch calls
// wasi:http, a trap stub while DISABLED_FEATURES (edge/build/js.py) has "http". Used right
// after the SDK's report of an uncaught exception, which the node believes only when the trap
// comes next.
const engineFetch = globalThis.fetch;
export function trapNow() {
  engineFetch.call(globalThis, "http://trap.invalid/");
}

// The network is denied by capability (no wasi:http import, DISABLED_FEATURES): the engine's
// fetch traps with nothing in the log. A rejection says why, and code that catches it can go on.
globalThis.fetch = async function fetch() {
  throw new TypeError("fetch is not available: functions have no network access");
};

const NO_BODY = new Set(["GET", "HEAD"]);

// Workers' `request.cf` names for the fields of our geo record; a field the GeoIP database does
// not know is absent, as on Workers. Latitude and longitude are strings there too.
function cfOf(raw) {
  const g = raw.context.geo;
  const cf = {};
  if (g.country != null) cf.country = g.country;
  if (g.continent != null) cf.continent = g.continent;
  if (g.city != null) cf.city = g.city;
  if (g.latitude != null) cf.latitude = String(g.latitude);
  if (g.longitude != null) cf.longitude = String(g.longitude);
  return cf;
}

// A Web `Request` over the WIT record: repeated headers are joined with ", " by `Headers`, the
// body is read with text()/json()/arrayBuffer() (or request.body, a ReadableStream).
export function webRequest(raw) {
  const method = raw.method.toUpperCase();
  const init = { method, headers: raw.headers };
  if (!NO_BODY.has(method) && raw.body.length > 0) init.body = latin1ToBytes(raw.body);
  const request = new WebRequest(raw.url, init);
  // The Request's own Headers drop `host` (a forbidden request header in browsers); a Worker
  // reads it, so request.headers is a Headers of every header the node passed.
  Object.defineProperty(request, "headers", { value: new Headers(raw.headers) });
  Object.defineProperty(request, "cf", { value: cfOf(raw), enumerable: true });
  return request;
}

// Workers' `env`: the function's config values (edge.toml [config], then deploy-time values and
// secrets), looked up on each read, so no list of keys is needed. An unset key is undefined,
// and the object has no own keys: Object.keys(env) is [].
export const env = new Proxy(Object.create(null), {
  get(_target, key) {
    if (typeof key !== "string") return undefined;
    const value = configGet(key);
    return value === null ? undefined : value;
  },
  has(_target, key) {
    return typeof key === "string" && configGet(key) != null;
  },
});

// Workers' `ctx` (and the service worker's event.waitUntil). componentize-js runs the engine's
// event loop until nothing is left to run before the call returns, so work given to waitUntil
// is done before the answer leaves the function (an instance lives for one request) without
// the SDK awaiting it: one that never settles is dropped then, and the answer stands (the node
// logs a warning, see edge.js's waitUntil watch). `watch` takes each promise given.
export class ExecutionContext {
  constructor(watch) {
    this.watch = watch;
    this.waiting = 0; // promises given: a synchronous answer then still runs the event loop
  }

  waitUntil(promise) {
    this.waiting += 1;
    this.watch(promise);
  }

  // There is no origin to fall back to: an exception still ends the request with a 500.
  passThroughOnException() {}
}

// The service worker's event (Fastly Compute, Spin, older Workers).
export class FetchEvent {
  constructor(raw, ctx) {
    this.type = "fetch";
    this.request = webRequest(raw);
    // Fastly's names; the geo record under Fastly's field names too.
    const geo = raw.context.geo;
    this.client = {
      address: raw.clientIp,
      geo: {
        country_code: geo.country ?? null,
        continent: geo.continent ?? null,
        city: geo.city ?? null,
        latitude: geo.latitude ?? null,
        longitude: geo.longitude ?? null,
      },
    };
    this.responded = false;
    this.response = undefined;
    this.ctx = ctx;
  }

  respondWith(response) {
    if (this.responded) throw new Error("event.respondWith() was already called");
    this.responded = true;
    this.response = response;
  }

  waitUntil(promise) {
    this.ctx.waitUntil(promise);
  }

  passThroughOnException() {}
}
