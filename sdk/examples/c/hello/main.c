/* hello: the smallest C edge function. */
#define EDGE_FUNCTION_IMPLEMENTATION
#include "edge_function.h"

void edge_handle(const edge_request_t *req, edge_response_t *resp) {
    (void)req;
    static const char body[] = "Hello from C!\n";
    resp->status = 200;
    edge_response_add_header(resp, "content-type", "text/plain; charset=utf-8");
    edge_response_set_body(resp, body, sizeof body - 1);
}
