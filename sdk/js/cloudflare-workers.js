// cloudflare-workers.js: what `import ... from "cloudflare:workers"` gets (edge build aliases
// the module here): the `WorkerEntrypoint` base class and `env`. Anything else Workers' module
// has (Durable Objects, workflows, RPC) has no counterpart, and the build names the import.

import { env } from "./web.js";

export { env };

// `export default class extends WorkerEntrypoint { async fetch(request) { ... } }`: edge.js's
// wrapModule makes one per request with the request's ctx and the config values' env.
export class WorkerEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}
