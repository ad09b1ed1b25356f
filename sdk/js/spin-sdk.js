// spin-sdk.js: Spin's JavaScript shapes from before its fetch event, and what
// `import ... from "@fermyon/spin-sdk"` gets (edge build aliases the package here): its
// `ResponseBuilder`, `Variables` and `Router`. Key-value, outbound HTTP and the rest have no
// counterpart, and the build names the import.

import { config, latin1ToBytes, toBytes } from "./edge.js";
import { WebResponse, webRequest } from "./web.js";

const decoder = new TextDecoder();

// The headers the Spin host adds to every request, as far as a function here can know them.
// Exact: `spin-full-url` (the URL the client asked for) and `spin-client-addr` (the client's
// address after trusted-proxy handling, without a port: Spin's has one, the node does not pass
// it). Approximations, because the function does not know the node's route pattern (edge.toml
// or node.toml `route = "*/name"`) and the URL it sees keeps the route's path: the function is
// taken for a Spin application's only component at `route = "/..."` with the default base, as
// most ported ones are, so `spin-path-info` is the whole path, `spin-matched-route` and
// `spin-raw-component-route` are "/...", `spin-component-route` is "" (the route without its
// wildcard) and `spin-base-path` is "/". No `spin-path-match-*`: no route has parameters.
// A client's own header of one of these names is dropped, as the Spin host sets them over it.
const SPIN_HEADERS = new Set([
  "spin-full-url", "spin-path-info", "spin-matched-route", "spin-base-path",
  "spin-raw-component-route", "spin-component-route", "spin-client-addr",
]);

function withSpinHeaders(raw) {
  const headers = raw.headers.filter(([name]) => !SPIN_HEADERS.has(name));
  headers.push(
    ["spin-full-url", raw.url],
    ["spin-path-info", new URL(raw.url).pathname],
    ["spin-matched-route", "/..."],
    ["spin-base-path", "/"],
    ["spin-raw-component-route", "/..."],
    ["spin-component-route", ""],
    ["spin-client-addr", raw.clientIp],
  );
  return headers;
}

// The request of `handleRequest(request)` (Spin's JS SDK v1): method, `uri` (path and query,
// as Spin has it; the full URL is the `spin-full-url` header, as there), `headers` an object of
// lower-case names (repeated ones joined with ", ") with Spin's own (withSpinHeaders), `body`
// an ArrayBuffer, `text()`, `json()`.
export function spinRequest(raw) {
  const headers = {};
  const url = new URL(raw.url);
  for (const [name, value] of withSpinHeaders(raw)) {
    const joined = Object.hasOwn(headers, name) ? `${headers[name]}, ${value}` : value;
    // Defined, not assigned: a header named `__proto__` is a header like any other.
    Object.defineProperty(headers, name, {
      value: joined, enumerable: true, writable: true, configurable: true,
    });
  }
  const bytes = latin1ToBytes(raw.body);
  return {
    method: raw.method.toUpperCase(),
    uri: url.pathname + url.search,
    headers,
    body: bytes.buffer,
    text: () => decoder.decode(bytes),
    json: () => JSON.parse(decoder.decode(bytes)),
  };
}

// The `req` of `handler(req, res)` (Spin's JS SDK v2): a Web Request, with Spin's headers too.
export function spinWebRequest(raw) {
  return webRequest({ ...raw, headers: withSpinHeaders(raw) });
}

// The `res` of `handler(req, res)` (Spin's JS SDK v2): status(), set(), write(), send(), end().
// Nothing is streamed: the answer is what was written when end() (or send()) is called, or
// when the handler's Promise settles after a write(). As on Spin, whose first write() sends the
// status and headers: from then on status() and set() throw, and a change to `res.headers`
// is not in the answer (its status and headers are those of the first write).
export class ResponseBuilder {
  constructor(ended) {
    this.headers = new Headers();
    this.statusCode = 200;
    this.chunks = [];
    this.written = false;
    this.sent = false;
    this.whole = null; // { value } once send() came before any write()
    this.head = null; // { status, headers } as they were at the first write() or end()
    this.ended = ended;
  }

  status(code) {
    if (this.written) throw new Error("Headers and Status already sent");
    this.statusCode = code;
    return this;
  }

  getStatus() {
    return this.statusCode;
  }

  set(nameOrHeaders, value) {
    if (this.written) throw new Error("Headers already sent");
    if (typeof nameOrHeaders === "string" && typeof value === "string") {
      this.headers.set(nameOrHeaders, value);
    } else if (nameOrHeaders instanceof Headers) {
      // Its own properties are empty: read as an object, every header was dropped.
      nameOrHeaders.forEach((v, name) => this.headers.set(name, v));
    } else if (typeof nameOrHeaders === "object" && nameOrHeaders && value === undefined) {
      for (const [name, v] of Object.entries(nameOrHeaders)) this.headers.set(name, v);
    } else {
      throw new Error("Invalid arguments");
    }
    return this;
  }

  // What Spin sends with the first write: a copy, so later changes to `headers` are not.
  commitHead() {
    if (!this.head) this.head = { status: this.statusCode, headers: new Headers(this.headers) };
  }

  write(value) {
    if (this.sent) throw new Error("Response has already been sent");
    this.commitHead();
    this.written = true;
    this.chunks.push(toBytes(value));
  }

  end() {
    if (this.sent) throw new Error("Response has already been sent");
    const { written, head } = this;
    this.commitHead();
    this.written = true;
    // Sent only once the answer is made: a Response that cannot be (a 204 with a body, a
    // status out of range) is the handler's exception, not an error after answering, which
    // left the request without an answer ever (500 no_response). As on Spin, the handler
    // may catch it and send another.
    try {
      this.ended();
    } catch (e) {
      this.written = written;
      this.head = head;
      this.whole = null;
      throw e;
    }
    this.sent = true;
  }

  // Before any write(), as on Spin: the answer is a Response of `value`, so any body a
  // Response takes (a stream, a Blob, URLSearchParams) is sent as such, a string as text.
  send(value) {
    if (this.sent) throw new Error("Response has already been sent");
    if (this.written) {
      if (value) this.write(value);
    } else {
      this.whole = { value };
    }
    this.end();
  }

  // The Web Response of what was sent or written.
  response() {
    const { status, headers } = this.head ?? { status: this.statusCode, headers: this.headers };
    const init = { status, headers };
    if (this.whole) return new WebResponse(this.whole.value ?? null, init);
    const size = this.chunks.reduce((n, c) => n + c.length, 0);
    const body = new Uint8Array(size);
    let at = 0;
    for (const chunk of this.chunks) {
      body.set(chunk, at);
      at += chunk.length;
    }
    // No body at all when nothing was written: a 204's or 304's may not have one, even empty.
    return new WebResponse(size > 0 ? body : null, init);
  }
}

// `handler(req, res)`: answered at res.end() / res.send(), or when the handler's Promise
// settles having written something; settling without a write is a TypeError that says so.
export function serveHandler(handler, request) {
  return new Promise((resolve, reject) => {
    const res = new ResponseBuilder(() => resolve(res.response()));
    Promise.resolve()
      .then(() => handler(request, res))
      .then(() => {
        if (!res.written) {
          throw new TypeError("handler(req, res) finished without calling res.send() or res.end()");
        }
        // Once sent, the answer was made then: a stream it has may not be read twice.
        if (!res.sent) resolve(res.response());
      })
      .catch((e) => {
        // After res.end() the answer stands, as on Spin; the error is only logged.
        if (res.sent) console.error("handler(req, res) failed after answering:", e);
        else reject(e);
      });
  });
}

// Spin's application variables are edge's configuration values (edge.toml `[config]`, then
// `edge config set` / `--var` / `.dev.vars`): `Variables.get(name)` is that value, null when
// unset, as Spin's SDK answers.
export const Variables = {
  get(name) {
    return config.get(String(name)) ?? null;
  },
};

// Spin's `Router()` (its JS SDK v2 wraps itty-router; `spin new http-js` starts with one):
// `router.get(path, ...handlers)` (also post, put, patch, delete, options, head and `all`, any
// method) registers a route; `await router.handleRequest(req, res, ...extra)` goes through the
// routes in the order registered and calls each handler of each one whose method and path
// match as `handler(metadata, req, res, extra)` (extra: an array, as Spin passes it), until one
// returns something other than undefined or null, which it returns. `metadata` has `method`,
// `url`, `params` (from `:name`, `:name?` and greedy `:name+` segments, as in the URL) and
// `query` (a value per name, an array for a repeated one). `*` matches anything. Paths match
// the request URL's whole path (see withSpinHeaders: an app's only component at "/...").
const ROUTE_METHODS = ["get", "post", "put", "patch", "delete", "options", "head", "all"];

function routePattern(path) {
  let source = "";
  for (const part of path.split("/").filter((p) => p !== "")) {
    const param = /^:(\w+)([?+]?)$/.exec(part);
    if (part === "*") {
      source += "(?:/.*)?";
    } else if (param === null) {
      const literal = part.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*");
      source += `/${literal}`;
    } else if (param[2] === "+") {
      source += `/(?<${param[1]}>.+)`;
    } else if (param[2] === "?") {
      source += `(?:/(?<${param[1]}>[^/]+))?`;
    } else {
      source += `/(?<${param[1]}>[^/]+)`;
    }
  }
  return new RegExp(`^${source}/*$`);
}

function queryOf(url) {
  const query = {};
  for (const [name, value] of url.searchParams) {
    if (!(name in query)) query[name] = value;
    else if (Array.isArray(query[name])) query[name].push(value);
    else query[name] = [query[name], value];
  }
  return query;
}

export function Router() {
  const routes = [];
  const router = {
    routes,
    async handle(request, ...extra) {
      const url = new URL(request.url);
      const method = String(request.method).toUpperCase();
      for (const [want, pattern, handlers, path] of routes) {
        if (want !== "ALL" && want !== method) continue;
        const match = pattern.exec(url.pathname);
        if (match === null) continue;
        const metadata = {
          ...request, method, url: request.url, route: path,
          params: { ...match.groups }, query: queryOf(url),
        };
        for (const handler of handlers) {
          const answer = await handler(metadata, ...extra);
          if (answer !== undefined && answer !== null) return answer;
        }
      }
      return undefined;
    },
    handleRequest(req, res, ...extra) {
      const url = req.headers.get("spin-full-url") || req.url;
      return router.handle({ method: req.method, url }, req, res, extra);
    },
  };
  for (const name of ROUTE_METHODS) {
    router[name] = (path, ...handlers) => {
      routes.push([name.toUpperCase(), routePattern(path), handlers, path]);
      return router;
    };
  }
  return router;
}
