/*
 * edge_function.h: the C binding of the edge:function@0.1.0 world (sdk/wit/function.wit).
 *
 * Written by hand against the component model's canonical ABI, so that a C function needs only
 * `zig cc` and `wasm-tools` (both from PyPI) to build. Include it in exactly one translation unit
 * after defining EDGE_FUNCTION_IMPLEMENTATION, and define:
 *
 *     void edge_handle(const edge_request_t *req, edge_response_t *resp);
 *
 * `resp` arrives with status 200 and no headers or body. Memory: every request runs in a fresh
 * instance, so allocations need not be freed; buffers handed to the response must stay alive
 * until the handler returns (use edge_alloc or static storage, not the stack).
 *
 * Layouts below match the canonical ABI for wasm32 (pointers and size_t are 32 bits), which the
 * static asserts check. Bodies cross the boundary as strings of ISO-8859-1 code points (see
 * `type body` in the WIT); the export wrapper converts, so `req->body` and `resp->body` are
 * plain bytes here.
 */
#ifndef EDGE_FUNCTION_H
#define EDGE_FUNCTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const char *ptr;
    size_t len;
} edge_string_t;

typedef struct {
    const uint8_t *ptr;
    size_t len;
} edge_bytes_t;

typedef struct {
    edge_string_t name;
    edge_string_t value;
} edge_header_t;

typedef struct {
    edge_header_t *ptr;
    size_t len;
} edge_headers_t;

typedef struct {
    bool is_some;
    edge_string_t val;
} edge_option_string_t;

typedef struct {
    bool is_some;
    double val;
} edge_option_f64_t;

typedef struct {
    edge_option_string_t country;
    edge_option_string_t continent;
    edge_option_string_t city;
    edge_option_f64_t latitude;
    edge_option_f64_t longitude;
} edge_geo_t;

typedef struct {
    edge_string_t region;
    edge_string_t node_id;
    edge_string_t request_id;
    edge_geo_t geo;
} edge_context_t;

typedef struct {
    edge_string_t method;
    edge_string_t url;
    edge_headers_t headers;
    edge_bytes_t body;
    edge_string_t client_ip;
    edge_context_t context;
} edge_request_t;

typedef struct {
    uint16_t status;
    edge_headers_t headers;
    edge_bytes_t body;
} edge_response_t;

typedef enum {
    EDGE_LOG_TRACE = 0,
    EDGE_LOG_DEBUG = 1,
    EDGE_LOG_INFO = 2,
    EDGE_LOG_WARN = 3,
    EDGE_LOG_ERROR = 4,
} edge_log_level_t;

_Static_assert(sizeof(void *) == 4, "edge functions target wasm32");
_Static_assert(sizeof(edge_option_string_t) == 12, "option<string> layout");
_Static_assert(sizeof(edge_option_f64_t) == 16, "option<f64> layout");
_Static_assert(sizeof(edge_geo_t) == 72, "geo layout");
_Static_assert(sizeof(edge_context_t) == 96, "edge-context layout");
_Static_assert(offsetof(edge_request_t, context) == 40, "request layout");
_Static_assert(sizeof(edge_response_t) == 20, "response layout");

/* The user's handler. */
void edge_handle(const edge_request_t *req, edge_response_t *resp);

/* Helpers. */
void *edge_alloc(size_t size);
edge_string_t edge_str(const char *cstr);
void edge_log(edge_log_level_t level, const char *message);
/* Looks up a config value; returns false when it is not set. */
bool edge_config_get(const char *key, edge_string_t *out);
/* Appends a response header (name should be lower-case). */
void edge_response_add_header(edge_response_t *resp, const char *name, const char *value);
/* Sets the body to a copy of `len` bytes. */
void edge_response_set_body(edge_response_t *resp, const void *data, size_t len);
/* Finds the first request header with this (lower-case) name. */
bool edge_request_header(const edge_request_t *req, const char *name, edge_string_t *out);

#ifdef EDGE_FUNCTION_IMPLEMENTATION

#include <stdlib.h>

#define EDGE_IMPORT(module, name) __attribute__((import_module(module), import_name(name)))
#define EDGE_EXPORT(name) __attribute__((export_name(name)))

EDGE_IMPORT("edge:function/log@0.1.0", "write")
extern void edge__log_write(int32_t level, const char *ptr, size_t len);

EDGE_IMPORT("edge:function/config@0.1.0", "get")
extern void edge__config_get(const char *ptr, size_t len, edge_option_string_t *ret);

/* Request-scoped memory comes first from a static arena: it is part of the module's initial
 * memory, so a typical request never grows linear memory (each memory.grow costs the host a
 * page-protection change, and a fresh instance per request would pay it on every request).
 * Nothing is ever freed: the instance ends with the request. Past the arena, malloc. */
#ifndef EDGE_ARENA_BYTES
#define EDGE_ARENA_BYTES (256 * 1024)
#endif
/* The count sits right before the bytes, on the page the first allocation lands on: apart, the
 * two would put another page of linear memory under every request (measured: two page faults
 * more per fresh instance, one of them a copy-on-write that flushes the TLB). */
static struct {
    size_t used;
    unsigned char bytes[EDGE_ARENA_BYTES] __attribute__((aligned(16)));
} edge__arena;

static void *edge__alloc(size_t size, size_t align) {
    size_t used = edge__arena.used;
    size_t start = (used + (align - 1)) & ~(align - 1);
    if (start >= used && start <= EDGE_ARENA_BYTES && size <= EDGE_ARENA_BYTES - start) {
        edge__arena.used = start + size;
        return edge__arena.bytes + start;
    }
    void *out = malloc(size ? size : 1);  /* malloc aligns to 16, enough for any ABI type */
    if (!out) {
        __builtin_trap();
    }
    return out;
}

static bool edge__in_arena(const void *ptr) {
    return (const unsigned char *)ptr >= edge__arena.bytes &&
           (const unsigned char *)ptr < edge__arena.bytes + EDGE_ARENA_BYTES;
}

static void *edge__grow(void *ptr, size_t old_size, size_t align, size_t new_size) {
    if (ptr && !edge__in_arena(ptr)) {
        void *out = realloc(ptr, new_size);
        if (!out) {
            __builtin_trap();
        }
        return out;
    }
    void *out = edge__alloc(new_size, align);
    if (ptr) {
        memcpy(out, ptr, old_size < new_size ? old_size : new_size);
    }
    return out;
}

EDGE_EXPORT("cabi_realloc")
void *cabi_realloc(void *ptr, size_t old_size, size_t align, size_t new_size) {
    if (new_size == 0) {
        return (void *)align;
    }
    return edge__grow(ptr, old_size, align ? align : 1, new_size);
}

void *edge_alloc(size_t size) {
    return edge__alloc(size, 16);
}

edge_string_t edge_str(const char *cstr) {
    edge_string_t out = {cstr, strlen(cstr)};
    return out;
}

void edge_log(edge_log_level_t level, const char *message) {
    edge__log_write((int32_t)level, message, strlen(message));
}

bool edge_config_get(const char *key, edge_string_t *out) {
    edge_option_string_t ret;
    edge__config_get(key, strlen(key), &ret);
    if (ret.is_some && out) {
        *out = ret.val;
    }
    return ret.is_some;
}

void edge_response_add_header(edge_response_t *resp, const char *name, const char *value) {
    size_t n = resp->headers.len;
    edge_header_t *grown = edge__grow(resp->headers.ptr, n * sizeof(edge_header_t),
                                      _Alignof(edge_header_t), (n + 1) * sizeof(edge_header_t));
    grown[n].name = edge_str(name);
    grown[n].value = edge_str(value);
    resp->headers.ptr = grown;
    resp->headers.len = n + 1;
}

void edge_response_set_body(edge_response_t *resp, const void *data, size_t len) {
    uint8_t *copy = edge_alloc(len);
    memcpy(copy, data, len);
    resp->body.ptr = copy;
    resp->body.len = len;
}

bool edge_request_header(const edge_request_t *req, const char *name, edge_string_t *out) {
    size_t name_len = strlen(name);
    for (size_t i = 0; i < req->headers.len; i++) {
        edge_string_t h = req->headers.ptr[i].name;
        if (h.len == name_len && memcmp(h.ptr, name, name_len) == 0) {
            *out = req->headers.ptr[i].value;
            return true;
        }
    }
    return false;
}

/* Body transport: the UTF-8 of each byte read as ISO-8859-1. Decoding never grows the data,
 * so the request body is decoded in place. */
static void edge__body_decode(edge_bytes_t *body) {
    uint8_t *p = (uint8_t *)body->ptr;
    size_t out = 0;
    for (size_t i = 0; i < body->len; i++) {
        uint8_t c = p[i];
        if (c >= 0xC0 && i + 1 < body->len) {
            p[out++] = (uint8_t)(((c & 0x03) << 6) | (p[++i] & 0x3F));
        } else {
            p[out++] = c;
        }
    }
    body->len = out;
}

static edge_bytes_t edge__body_encode(edge_bytes_t body) {
    size_t n = 0;
    for (size_t i = 0; i < body.len; i++) {
        n += body.ptr[i] < 0x80 ? 1 : 2;
    }
    if (n == body.len) {
        return body;
    }
    uint8_t *out = edge_alloc(n);
    size_t j = 0;
    for (size_t i = 0; i < body.len; i++) {
        uint8_t c = body.ptr[i];
        if (c < 0x80) {
            out[j++] = c;
        } else {
            out[j++] = (uint8_t)(0xC0 | (c >> 6));
            out[j++] = (uint8_t)(0x80 | (c & 0x3F));
        }
    }
    edge_bytes_t encoded = {out, n};
    return encoded;
}

/* The canonical ABI passes the request record by pointer (it flattens to more than 16 values)
 * and returns the response through a static return area (it flattens to more than one). */
static edge_response_t edge__ret_area;

EDGE_EXPORT("edge:function/handler@0.1.0#handle")
edge_response_t *edge__export_handle(edge_request_t *req) {
    edge__body_decode(&req->body);
    edge_response_t resp = {200, {NULL, 0}, {NULL, 0}};
    edge_handle(req, &resp);
    resp.body = edge__body_encode(resp.body);
    edge__ret_area = resp;
    return &edge__ret_area;
}

#endif /* EDGE_FUNCTION_IMPLEMENTATION */
#endif /* EDGE_FUNCTION_H */
