// timers.js: setTimeout, setInterval and Workers' scheduler.wait on virtual time.
//
// The engine's own timers waited in the host's poll, where the deadline (epoch interruption,
// which stops wasm code only) cannot end a wait; the node now gives every clock wait 0
// (edge/sandbox/waitclamp.py), so they would fire at once, out of order. A function has no I/O
// to wait for, so a timer here waits for nothing: timers run as tasks, one at a time, in the order of their due times (delay
// from the time they were set, ties in the order set), each once nothing else is left to run.
// `await scheduler.wait(50)` resumes once the rest of the request's work is done, and a
// `Promise.race` against a timeout is won by the work. Date.now() does not move (it is frozen at
// the request's start unless edge.toml grants `wall_clock`).
//
// As in Workers, timers end with the request: once the handler has answered and no promise
// given to waitUntil is pending, the timers left are dropped (a setInterval would run forever).

// The idle hook: the engine's zero-delay timer, a task that runs once the microtasks are done
// (its poll is over at once: a clock pollable of zero duration is ready).
const engineSetTimeout = globalThis.setTimeout;

const MAX_DELAY_MS = 2 ** 31 - 1; // browsers' limit: a longer delay is taken as 0

let nextId = 1;
let seq = 0;
let virtualNowMs = 0;
const queue = []; // entries { id, at, seq, callback, args, everyMs }, sorted by (at, seq)
const live = new Map(); // id -> its entry, until it runs (once) or is cleared
let generation = 0; // a pump of an earlier request (reused instance) does nothing
let pumping = false;
let idleWaiters = [];

// Set by the SDK: whether the request has its answer, how many waitUntil promises are pending,
// and what a callback's exception does.
export const lifetime = { answered: false, extending: 0, threw: null };

function delayOf(delay) {
  const ms = Number(delay);
  return Number.isFinite(ms) && ms > 0 && ms <= MAX_DELAY_MS ? Math.floor(ms) : 0;
}

function before(a, b) {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}

function enqueue(entry) {
  let lo = 0;
  let hi = queue.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (before(queue[mid], entry)) lo = mid + 1;
    else hi = mid;
  }
  queue.splice(lo, 0, entry);
  if (!pumping) {
    pumping = true;
    const mine = generation;
    engineSetTimeout(() => pump(mine), 0);
  }
}

function idle() {
  pumping = false;
  const waiters = idleWaiters;
  idleWaiters = [];
  for (const resolve of waiters) resolve();
}

function pump(mine) {
  if (mine !== generation) return;
  if (lifetime.answered && lifetime.extending === 0) {
    queue.length = 0;
    live.clear();
  }
  let entry = queue.shift();
  while (entry !== undefined && live.get(entry.id) !== entry) entry = queue.shift();
  if (entry === undefined) {
    idle();
    return;
  }
  virtualNowMs = Math.max(virtualNowMs, entry.at);
  if (entry.everyMs === null) {
    live.delete(entry.id);
  } else {
    entry.at = virtualNowMs + entry.everyMs;
    entry.seq = seq++;
    enqueue(entry); // pumping is true: no second pump starts
  }
  engineSetTimeout(() => pump(mine), 0);
  try {
    entry.callback(...entry.args);
  } catch (e) {
    // Unseen otherwise: the engine drops an exception thrown by a task.
    if (lifetime.threw === null) throw e;
    lifetime.threw(e);
  }
}

function timer(repeat) {
  return function set(callback, delay = 0, ...args) {
    if (typeof callback !== "function") {
      throw new TypeError("a timer's callback must be a function (strings are not evaluated)");
    }
    const ms = delayOf(delay);
    const id = nextId++;
    // An interval of 0 would never let virtual time pass: at least 1 ms, as browsers clamp.
    const everyMs = repeat ? Math.max(ms, 1) : null;
    const entry = { id, at: virtualNowMs + ms, seq: seq++, callback, args, everyMs };
    live.set(id, entry);
    enqueue(entry);
    return id;
  };
}

function clear(id) {
  live.delete(Number(id));
}

// Resolves once no timer is left to run (or those left were dropped with the request). The SDK
// awaits it before an answer leaves while waitUntil work is pending, as that work may wait on
// timers: the engine stops running tasks once the call's Promise has settled.
export function timersIdle() {
  if (!pumping) return Promise.resolve();
  return new Promise((resolve) => idleWaiters.push(resolve));
}

// An instance reused for the next request (`[instance] policy = "reuse"`) starts with none.
export function resetTimers() {
  generation += 1;
  pumping = false;
  idleWaiters = [];
  queue.length = 0;
  live.clear();
  virtualNowMs = 0;
  lifetime.answered = false;
  lifetime.extending = 0;
}

globalThis.setTimeout = timer(false);
globalThis.setInterval = timer(true);
globalThis.clearTimeout = clear;
globalThis.clearInterval = clear;

// Workers' scheduler.wait(ms): a Promise that a timer resolves.
const scheduler = globalThis.scheduler ?? {};
scheduler.wait = (ms, options = {}) =>
  new Promise((resolve, reject) => {
    const signal = options?.signal;
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const id = globalThis.setTimeout(resolve, ms);
    signal?.addEventListener?.("abort", () => {
      clear(id);
      reject(signal.reason);
    });
  });
globalThis.scheduler = scheduler;

// AbortSignal.timeout(ms) on the same timers: the engine's own would wait in the host's poll.
if (typeof AbortSignal === "function") {
  AbortSignal.timeout = function timeout(ms) {
    const controller = new AbortController();
    globalThis.setTimeout(() => {
      const reason = typeof DOMException === "function"
        ? new DOMException("The operation timed out.", "TimeoutError")
        : Object.assign(new Error("The operation timed out."), { name: "TimeoutError" });
      controller.abort(reason);
    }, ms);
    return controller.signal;
  };
}
