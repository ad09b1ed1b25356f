/*
 * edge_json.h: a tiny growable buffer and JSON writer for C edge functions.
 *
 * Header-only (static inline) so that it needs no implementation guard; include it after
 * edge_function.h. Memory comes from edge_alloc and is never freed: each request runs in a fresh
 * instance, so the whole heap goes away with it.
 *
 *     edge_buf_t b = {0};
 *     edge_json_begin_object(&b);
 *     edge_json_key(&b, "method");
 *     edge_json_string(&b, req->method);
 *     edge_json_end_object(&b);
 *     edge_response_set_body(resp, b.ptr, b.len);
 *
 * Commas are inserted automatically: the writer remembers whether the current container already
 * has an element (up to EDGE_JSON_MAX_DEPTH levels of nesting).
 */
#ifndef EDGE_JSON_H
#define EDGE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge_function.h"

#define EDGE_JSON_MAX_DEPTH 32

typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
    /* has_item[d]: the container at depth d already holds an element (needs a comma). */
    bool has_item[EDGE_JSON_MAX_DEPTH];
    int depth;
    /* Set after a key: the next value follows the colon, so it must not add a comma. */
    bool after_key;
} edge_buf_t;

static inline void edge_buf_append(edge_buf_t *b, const char *data, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + len) {
            cap *= 2;
        }
        char *grown = edge_alloc(cap);
        if (b->len) {
            memcpy(grown, b->ptr, b->len);
        }
        b->ptr = grown;
        b->cap = cap;
    }
    memcpy(b->ptr + b->len, data, len);
    b->len += len;
}

static inline void edge_buf_puts(edge_buf_t *b, const char *cstr) {
    edge_buf_append(b, cstr, strlen(cstr));
}

/* Called before every value or key: writes the separating comma when one is due. */
static inline void edge_json__sep(edge_buf_t *b) {
    if (b->after_key) {
        b->after_key = false;
        return;
    }
    if (b->depth > 0 && b->depth <= EDGE_JSON_MAX_DEPTH) {
        if (b->has_item[b->depth - 1]) {
            edge_buf_append(b, ",", 1);
        }
        b->has_item[b->depth - 1] = true;
    }
}

static inline void edge_json__open(edge_buf_t *b, char c) {
    edge_json__sep(b);
    edge_buf_append(b, &c, 1);
    if (b->depth < EDGE_JSON_MAX_DEPTH) {
        b->has_item[b->depth] = false;
    }
    b->depth++;
}

static inline void edge_json__close(edge_buf_t *b, char c) {
    edge_buf_append(b, &c, 1);
    b->depth--;
}

static inline void edge_json_begin_object(edge_buf_t *b) { edge_json__open(b, '{'); }
static inline void edge_json_end_object(edge_buf_t *b) { edge_json__close(b, '}'); }
static inline void edge_json_begin_array(edge_buf_t *b) { edge_json__open(b, '['); }
static inline void edge_json_end_array(edge_buf_t *b) { edge_json__close(b, ']'); }

/* Writes `s` as a quoted JSON string. Bytes >= 0x80 pass through: the input is UTF-8 already
 * (WIT strings are valid UTF-8), and JSON allows raw UTF-8. */
static inline void edge_json__quoted(edge_buf_t *b, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    edge_buf_append(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char uesc[6];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                memcpy(uesc, "\\u00", 4);
                uesc[4] = hex[c >> 4];
                uesc[5] = hex[c & 15];
            }
        }
        if (esc || c < 0x20) {
            edge_buf_append(b, s + run, i - run);
            if (esc) {
                edge_buf_puts(b, esc);
            } else {
                edge_buf_append(b, uesc, 6);
            }
            run = i + 1;
        }
    }
    edge_buf_append(b, s + run, len - run);
    edge_buf_append(b, "\"", 1);
}

static inline void edge_json_key(edge_buf_t *b, const char *key) {
    edge_json__sep(b);
    edge_json__quoted(b, key, strlen(key));
    edge_buf_append(b, ":", 1);
    b->after_key = true;
}

static inline void edge_json_string(edge_buf_t *b, edge_string_t s) {
    edge_json__sep(b);
    edge_json__quoted(b, s.ptr, s.len);
}

static inline void edge_json_cstring(edge_buf_t *b, const char *s) {
    edge_json_string(b, edge_str(s));
}

/* Bytes as a JSON string; the caller vouches that they are UTF-8 (e.g. a text body). */
static inline void edge_json_bytes_as_string(edge_buf_t *b, edge_bytes_t bytes) {
    edge_json__sep(b);
    edge_json__quoted(b, (const char *)bytes.ptr, bytes.len);
}

static inline void edge_json_null(edge_buf_t *b) {
    edge_json__sep(b);
    edge_buf_puts(b, "null");
}

static inline void edge_json_bool(edge_buf_t *b, bool v) {
    edge_json__sep(b);
    edge_buf_puts(b, v ? "true" : "false");
}

static inline void edge_json_number(edge_buf_t *b, double v) {
    char tmp[32];
    /* JSON has no NaN or infinity, so those become null. */
    if (v != v || v > 1.7976931348623157e308 || v < -1.7976931348623157e308) {
        edge_json_null(b);
        return;
    }
    /* Shortest of %.15g..%.17g that reads back exactly: 51.5074 stays 51.5074 rather than
     * 51.507399999999997, and every double still round-trips. */
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) {
            break;
        }
    }
    edge_json__sep(b);
    edge_buf_append(b, tmp, (size_t)n);
}

static inline void edge_json_option_string(edge_buf_t *b, edge_option_string_t v) {
    if (v.is_some) {
        edge_json_string(b, v.val);
    } else {
        edge_json_null(b);
    }
}

static inline void edge_json_option_number(edge_buf_t *b, edge_option_f64_t v) {
    if (v.is_some) {
        edge_json_number(b, v.val);
    } else {
        edge_json_null(b);
    }
}

#endif /* EDGE_JSON_H */
