// config: answers the "greeting" value from edge.toml's [config] table.
import { Response, config, log } from "edge";

export function handle(req) {
  const greeting = config.get("greeting");
  if (greeting === null) {
    log.warn("greeting not configured");
    return Response.text("config key 'greeting' is not set\n", { status: 404 });
  }
  log.info("answering with the configured greeting");
  return Response.text(greeting + "\n");
}
