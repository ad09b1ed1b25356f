// echo: answers with everything the function knows about the request, as JSON.
import { Response } from "edge";

export function handle(req) {
  return Response.json({
    method: req.method,
    url: req.url,
    headers: req.headers.map(([name, value]) => [name, value]),
    body: req.text(),
    client_ip: req.clientIp,
    region: req.region,
    node_id: req.nodeId,
    request_id: req.requestId,
    geo: req.geo,
  });
}
