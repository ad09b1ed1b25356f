/* config: answers the "greeting" value from edge.toml's [config] table. */
#define EDGE_FUNCTION_IMPLEMENTATION
#include "edge_function.h"

void edge_handle(const edge_request_t *req, edge_response_t *resp) {
    (void)req;
    edge_response_add_header(resp, "content-type", "text/plain; charset=utf-8");

    edge_string_t greeting;
    if (!edge_config_get("greeting", &greeting)) {
        static const char missing[] = "config key 'greeting' is not set\n";
        edge_log(EDGE_LOG_WARN, "greeting not configured");
        resp->status = 404;
        edge_response_set_body(resp, missing, sizeof missing - 1);
        return;
    }

    edge_log(EDGE_LOG_INFO, "answering with the configured greeting");
    /* greeting.ptr is host-allocated (through cabi_realloc) and lives until the instance goes. */
    uint8_t *body = edge_alloc(greeting.len + 1);
    memcpy(body, greeting.ptr, greeting.len);
    body[greeting.len] = '\n';
    resp->body.ptr = body;
    resp->body.len = greeting.len + 1;
}
