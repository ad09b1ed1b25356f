/* echo: answers with everything the function knows about the request, as JSON. */
#define EDGE_FUNCTION_IMPLEMENTATION
#include "edge_function.h"
#include "edge_json.h"

void edge_handle(const edge_request_t *req, edge_response_t *resp) {
    edge_buf_t b = {0};
    edge_json_begin_object(&b);

    edge_json_key(&b, "method");
    edge_json_string(&b, req->method);
    edge_json_key(&b, "url");
    edge_json_string(&b, req->url);

    edge_json_key(&b, "headers");
    edge_json_begin_array(&b);
    for (size_t i = 0; i < req->headers.len; i++) {
        edge_json_begin_array(&b);
        edge_json_string(&b, req->headers.ptr[i].name);
        edge_json_string(&b, req->headers.ptr[i].value);
        edge_json_end_array(&b);
    }
    edge_json_end_array(&b);

    /* The body is echoed as text; a non-UTF-8 body would make invalid JSON, which is fine for
     * an example but a real function should check or base64 it. */
    edge_json_key(&b, "body");
    edge_json_bytes_as_string(&b, req->body);
    edge_json_key(&b, "client_ip");
    edge_json_string(&b, req->client_ip);

    const edge_context_t *ctx = &req->context;
    edge_json_key(&b, "region");
    edge_json_string(&b, ctx->region);
    edge_json_key(&b, "node_id");
    edge_json_string(&b, ctx->node_id);
    edge_json_key(&b, "request_id");
    edge_json_string(&b, ctx->request_id);

    edge_json_key(&b, "geo");
    edge_json_begin_object(&b);
    edge_json_key(&b, "country");
    edge_json_option_string(&b, ctx->geo.country);
    edge_json_key(&b, "continent");
    edge_json_option_string(&b, ctx->geo.continent);
    edge_json_key(&b, "city");
    edge_json_option_string(&b, ctx->geo.city);
    edge_json_key(&b, "latitude");
    edge_json_option_number(&b, ctx->geo.latitude);
    edge_json_key(&b, "longitude");
    edge_json_option_number(&b, ctx->geo.longitude);
    edge_json_end_object(&b);

    edge_json_end_object(&b);
    edge_buf_append(&b, "\n", 1);

    resp->status = 200;
    edge_response_add_header(resp, "content-type", "application/json");
    resp->body.ptr = (const uint8_t *)b.ptr;
    resp->body.len = b.len;
}
