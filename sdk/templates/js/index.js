// {{name}}: an edge function. `handle` runs once per request.
import { Response, config, log } from "edge";

export function handle(req) {
  const greeting = config.get("greeting", "Hello from JavaScript!");
  log.info(`${req.method} ${req.url}`);
  return Response.text(`${greeting}\n`);
}
