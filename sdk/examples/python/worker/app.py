# worker: a Cloudflare Python Worker as written for Workers (`class Default(WorkerEntrypoint)`).
# Its `self.env.GREETING` is edge's configuration value GREETING, and `request.cf` the node's
# GeoIP lookup of the client. See README "Porting from Cloudflare Workers / Spin (Python)".
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.method == "POST":
            return Response.json({"received": await request.json()})
        where = request.cf.country or "somewhere"
        return Response(
            f"{self.env.GREETING}, visitor from {where}!\n",
            headers={"content-type": "text/plain; charset=utf-8"},
        )
