// hello: the smallest JavaScript edge function.
import { Response } from "edge";

export function handle(req) {
  return Response.text("Hello from JavaScript!\n");
}
