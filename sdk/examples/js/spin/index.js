// spin: a Spin JavaScript component as written for Spin's JS SDK v2 (`handler(req, res)`).
// Its variable (`Variables.get("greeting")`) is edge's configuration value of that name. See
// README "Porting from Cloudflare Workers / Fastly / Spin".
import { Variables } from "@fermyon/spin-sdk";

export async function handler(req, res) {
  const name = new URL(req.url).searchParams.get("name") ?? "world";
  if (req.method === "POST") {
    res.set("content-type", "application/json");
    res.send(JSON.stringify({ name, received: await req.text() }));
    return;
  }
  res.set({ "content-type": "text/plain; charset=utf-8" });
  res.send(`${Variables.get("greeting") ?? "Hello"}, ${name}!\n`);
}
