// spin: a Spin JavaScript component as written for Spin's JS SDK v2 (`handler(req, res)`), but
// for its variable: Spin's `Variables.get("greeting")` is edge's `config.get("greeting")`. See
// README "Porting from Cloudflare Workers / Fastly / Spin".
import { config } from "edge";

export async function handler(req, res) {
  const name = new URL(req.url).searchParams.get("name") ?? "world";
  if (req.method === "POST") {
    res.set("content-type", "application/json");
    res.send(JSON.stringify({ name, received: await req.text() }));
    return;
  }
  res.set({ "content-type": "text/plain; charset=utf-8" });
  res.send(`${config.get("greeting", "Hello")}, ${name}!\n`);
}
