/* {{name}}: an edge function. edge_handle runs once per request. */
#define EDGE_FUNCTION_IMPLEMENTATION
#include "edge_function.h"

void edge_handle(const edge_request_t *req, edge_response_t *resp) {
    (void)req;
    edge_string_t greeting;
    if (!edge_config_get("greeting", &greeting)) {
        greeting = edge_str("Hello from C!");
    }
    edge_log(EDGE_LOG_INFO, "handling a request");

    uint8_t *body = edge_alloc(greeting.len + 1);
    memcpy(body, greeting.ptr, greeting.len);
    body[greeting.len] = '\n';
    resp->status = 200;
    edge_response_add_header(resp, "content-type", "text/plain; charset=utf-8");
    resp->body.ptr = body;
    resp->body.len = greeting.len + 1;
}
