// worker: a Cloudflare Worker as written for Workers, no import from "edge". `env` holds the
// [config] values, `request.cf` the client's geo; see README "Porting from Cloudflare Workers".
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (request.method === "POST") {
      const doc = await request.json();
      return Response.json({ received: doc });
    }
    const where = [request.cf.city, request.cf.country].filter(Boolean).join(", ") || "somewhere";
    ctx.waitUntil(Promise.resolve().then(() => console.log(`served ${url.pathname}`)));
    return new Response(`${env.GREETING}, visitor from ${where}!\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
