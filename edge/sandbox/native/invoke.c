/* A fresh request in one native call: store, instantiation, the request record lowered into
 * wasmtime's C values, the handler's call, the response lifted back into flat buffers,
 * post-return and the store's deletion. edge/sandbox/function.py does the same in Python
 * (edge/sandbox/abi.py); there every step is a ctypes call or a struct written from Python,
 * about half of a C hello's time on the request path. Used for functions without WASI (a C
 * function's): the others' instantiation costs a millisecond, next to which this is noise.
 *
 * Built by edge/sandbox/native_build.py with `zig cc` and loaded with ctypes (edge.sandbox.native).
 * The wasmtime functions come as pointers from Python (no link-time dependency on libwasmtime).
 * Host imports the guest calls during the call are wasmtime-py's ctypes callbacks: they take the
 * GIL themselves, so this runs with the GIL released like any other wasmtime call.
 *
 * The value layout mirrors wasmtime 50's wasmtime/component/val.h; edge_invoke_layout reports
 * what this file assumes and Python refuses the helper when wasmtime-py's ctypes layout differs.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The blob's sizes and the events' fields are copied in the host's byte order, where
 * native_invoke.py's struct formats say little-endian: elsewhere this helper is not built
 * (named at load) and requests take the Python path. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "invoke.c supports little-endian hosts only"
#endif
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

enum { K_U16 = 4, K_F64 = 10, K_STRING = 12, K_LIST = 13, K_RECORD = 14, K_TUPLE = 15,
       K_OPTION = 18 };

typedef struct { size_t size; const char *data; } name_t;
typedef struct val val_t;
typedef struct entry entry_t;
typedef struct { size_t size; val_t *data; } vals_t; /* list and tuple */
typedef struct { size_t size; entry_t *data; } entries_t;
struct val {
    uint8_t kind;
    union {
        uint16_t u16;
        double f64;
        name_t string;
        vals_t list;
        entries_t record;
        val_t *option;
        uint8_t raw[24];
    } of;
};
struct entry { name_t name; val_t val; };
typedef struct { uint64_t store_id; uint32_t private1; } instance_t;
typedef struct { uint64_t opaque[4]; } func_t;

/* The wasmtime C API, as handed over by edge_invoke_init. */
static void *(*store_new)(void *engine, void *data, void *finalizer);
static void *(*store_context)(void *store);
static void (*store_limiter)(void *store, int64_t, int64_t, int64_t, int64_t, int64_t);
static void (*set_epoch_deadline)(void *context, uint64_t ticks);
static void *(*linker_instantiate)(void *linker, void *context, void *component, instance_t *out);
static bool (*instance_get_func)(const instance_t *, void *context, void *index, func_t *out);
static void *(*func_call)(const func_t *, void *context, const val_t *args, size_t nargs,
                          val_t *results, size_t nresults);
static void *(*func_post_return)(const func_t *, void *context);
static void (*val_delete)(val_t *);
static void (*store_delete)(void *store);
typedef void *(*callback_t)(void *env, void *context, const void *type, val_t *args,
                            size_t nargs, val_t *results, size_t nresults);
static void *(*context_get_data)(void *context);
static void *(*val_new)(val_t *val);
static void (*byte_vec_new)(name_t *out, size_t size, const char *data);
static void *(*linker_new)(void *engine);
static void *(*linker_root)(void *linker);
static void *(*instance_add_instance)(void *instance, const char *name, size_t len, void **out);
static void *(*instance_add_func)(void *instance, const char *name, size_t len, callback_t cb,
                                  void *data, void (*finalizer)(void *));
static void (*linker_instance_delete)(void *instance);
static void (*linker_delete)(void *linker);
static void (*error_delete)(void *error);

enum { FN_COUNT = 20 };

EXPORT void edge_invoke_init(void *const *fns) {
    store_new = fns[0];
    store_context = fns[1];
    store_limiter = fns[2];
    set_epoch_deadline = fns[3];
    linker_instantiate = fns[4];
    instance_get_func = fns[5];
    func_call = fns[6];
    func_post_return = fns[7];
    val_delete = fns[8];
    store_delete = fns[9];
    context_get_data = fns[10];
    val_new = fns[11];
    byte_vec_new = fns[12];
    linker_new = fns[13];
    linker_root = fns[14];
    instance_add_instance = fns[15];
    instance_add_func = fns[16];
    linker_instance_delete = fns[17];
    linker_delete = fns[18];
    error_delete = fns[19];
}

/* What this file assumes about the C API's layout and value kinds, for Python to compare. */
EXPORT void edge_invoke_layout(int64_t *out) {
    out[0] = (int64_t)sizeof(val_t);
    out[1] = (int64_t)offsetof(val_t, of);
    out[2] = (int64_t)sizeof(entry_t);
    out[3] = (int64_t)offsetof(entry_t, val);
    out[4] = (int64_t)sizeof(instance_t);
    out[5] = (int64_t)sizeof(func_t);
    out[6] = K_U16; out[7] = K_F64; out[8] = K_STRING; out[9] = K_LIST;
    out[10] = K_RECORD; out[11] = K_TUPLE; out[12] = K_OPTION;
    out[13] = FN_COUNT;
}

/* One compiled function, as Python keeps it per Code. */
struct edge_code {
    void *engine;
    void *linker;
    void *component;
    void *index;
    int64_t memory_limit_bytes;
    uint64_t response_body_limit_bytes;
};

/* The request, flattened by Python: `blob` starts with (10 + 2 * n_headers) u32 lengths, then the
 * strings' bytes in that order: method, url, body (raw bytes), client-ip, region, node-id,
 * request-id, country, continent, city, then each header's name and value. */
enum { S_METHOD, S_URL, S_BODY, S_CLIENT_IP, S_REGION, S_NODE_ID, S_REQUEST_ID, S_COUNTRY,
       S_CONTINENT, S_CITY, S_FIXED };
enum { GEO_COUNTRY = 1, GEO_CONTINENT = 2, GEO_CITY = 4, GEO_LATITUDE = 8, GEO_LONGITUDE = 16 };

/* Where a call ended, for Python to say why (edge_out.stage). */
enum { DONE = 0, FAILED_INSTANTIATE = 1, FAILED_CALL = 2, BAD_RESPONSE = 3,
       FAILED_POST_RETURN = 4, OUT_OF_MEMORY = 5 };
/* What was wrong with a response (edge_out.problem, with BAD_RESPONSE). */
enum { P_SHAPE = 1, P_BODY_OVER_LIMIT = 2, P_BODY_CODE_POINT = 3 };

struct edge_out {
    int64_t stage;
    int64_t problem;
    void *error;              /* a wasmtime_error_t * for Python to take over */
    uint64_t detail;          /* the body size over the limit, or the code point */
    uint64_t status;
    uint64_t n_headers;
    const uint8_t *headers;   /* per header: u32 name size, u32 value size, name, value */
    uint64_t headers_size;
    const uint8_t *body;
    uint64_t body_size;
    int64_t instantiate_ns;   /* CLOCK_MONOTONIC, for the instantiate histogram */
    int64_t instantiate_cpu_ns; /* this thread's CPU time, when asked for (see prepare.py) */
    int64_t wall_ns[4];       /* CLOCK_REALTIME: instantiate start, end; call start, end */
    const uint8_t *events;    /* host calls, in order (see struct event) */
    uint64_t events_size;
    uint64_t dropped;         /* log lines over MAX_LINES */
};

/* Per-thread growable buffers: the request's vals and bytes, and the response's copies. A
 * buffer grown past KEEP_BYTES by one large request is given back after it; all three are
 * freed when the thread ends (worker threads come and go). */
enum { KEEP_BYTES = 256 * 1024 };
struct buffer { uint8_t *data; size_t cap; };
struct buffers { struct buffer arena, headers, body, events; };
static pthread_key_t buffers_key;
static pthread_once_t buffers_once = PTHREAD_ONCE_INIT;

static void free_buffers(void *p) {
    struct buffers *b = p;
    free(b->arena.data);
    free(b->headers.data);
    free(b->body.data);
    free(b->events.data);
    free(b);
}

static void make_key(void) { pthread_key_create(&buffers_key, free_buffers); }

static struct buffers *thread_buffers(void) {
    pthread_once(&buffers_once, make_key);
    struct buffers *b = pthread_getspecific(buffers_key);
    if (!b) {
        b = calloc(1, sizeof *b);
        if (b && pthread_setspecific(buffers_key, b)) {
            free(b);
            b = NULL;
        }
    }
    return b;
}

static uint8_t *reserve(struct buffer *b, size_t size) {
    if (b->cap >= size && (b->cap <= KEEP_BYTES || size > KEEP_BYTES / 2))
        return b->data;
    size_t cap = size < 4096 ? 4096 : size;
    uint8_t *data = realloc(b->data, cap);
    if (!data)
        return NULL;
    b->data = data;
    b->cap = cap;
    return data;
}

static int64_t now_ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void set_string(val_t *v, const char *data, size_t size) {
    v->kind = K_STRING;
    v->of.string.size = size;
    v->of.string.data = data;
}

static void set_entry(entry_t *e, const char *name, val_t v) {
    e->name.size = strlen(name);
    e->name.data = name;
    e->val = v;
}

static val_t string_val(const char *data, size_t size) {
    val_t v;
    memset(&v, 0, sizeof v);
    set_string(&v, data, size);
    return v;
}

static val_t record_val(entry_t *entries, size_t size) {
    val_t v;
    memset(&v, 0, sizeof v);
    v.kind = K_RECORD;
    v.of.record.size = size;
    v.of.record.data = entries;
    return v;
}

/* The body's bytes as the UTF-8 of their ISO-8859-1 reading (see `type body` in the WIT). */
static size_t encode_body(const uint8_t *in, size_t size, uint8_t *out) {
    size_t n = 0;
    for (size_t i = 0; i < size; i++) {
        uint8_t b = in[i];
        if (b < 0x80) {
            out[n++] = b;
        } else {
            out[n++] = (uint8_t)(0xC0 | (b >> 6));
            out[n++] = (uint8_t)(0x80 | (b & 0x3F));
        }
    }
    return n;
}

/* The reverse; a code point above U+00FF (or a malformed sequence, which wasmtime's string
 * lifting never lets through) stops it: returns 0 and sets *bad to the code point. */
static int decode_body(const uint8_t *in, size_t size, uint8_t *out, size_t *n, uint64_t *bad) {
    size_t k = 0;
    for (size_t i = 0; i < size;) {
        uint8_t b = in[i];
        if (b < 0x80) {
            out[k++] = b;
            i++;
        } else if ((b == 0xC2 || b == 0xC3) && i + 1 < size && (in[i + 1] & 0xC0) == 0x80) {
            out[k++] = (uint8_t)(((b & 0x1F) << 6) | (in[i + 1] & 0x3F));
            i += 2;
        } else {
            uint64_t cp = b;
            int more = b >= 0xF0 ? 3 : b >= 0xE0 ? 2 : 1;
            cp &= (uint64_t)(0x3F >> more);
            for (int j = 1; j <= more && i + (size_t)j < size; j++)
                cp = (cp << 6) | (in[i + (size_t)j] & 0x3F);
            *bad = cp;
            return 0;
        }
    }
    *n = k;
    return 1;
}

/* The i-th length at the blob's start (read bytewise: a bytes object's data need not be
 * 4-aligned). */
static uint32_t length(const uint8_t *blob, size_t i) {
    uint32_t n;
    memcpy(&n, blob + 4 * i, 4);
    return n;
}

/* Lowers the request into the thread's arena; returns the root val or NULL (no memory). */
static val_t *lower(struct buffer *arena, const uint8_t *blob, uint32_t n_headers,
                    uint32_t geo_flags, double latitude, double longitude) {
    size_t n_strings = S_FIXED + 2 * (size_t)n_headers;
    const uint8_t *bytes = blob + 4 * n_strings;
    size_t body_max = 2 * (size_t)length(blob, S_BODY);
    size_t vals_bytes = sizeof(val_t) * (1 + 5 + 3 * n_headers) + sizeof(entry_t) * (6 + 4 + 5);
    uint8_t *at = reserve(arena, vals_bytes + body_max);
    if (!at)
        return NULL;
    val_t *root = (val_t *)at;
    entry_t *request = (entry_t *)(root + 1);
    entry_t *context = request + 6;
    entry_t *geo = context + 4;
    val_t *inner = (val_t *)(geo + 5);
    val_t *header_vals = inner + 5;
    uint8_t *body = (uint8_t *)(header_vals + 3 * n_headers);

    const char *s[S_FIXED]; /* the fixed strings and their sizes */
    size_t n[S_FIXED];
    const uint8_t *p = bytes;
    for (int i = 0; i < S_FIXED; i++) {
        s[i] = (const char *)p;
        n[i] = length(blob, (size_t)i);
        p += n[i];
    }
    size_t body_size = encode_body((const uint8_t *)s[S_BODY], n[S_BODY], body);

    *root = record_val(request, 6);

    val_t headers;
    memset(&headers, 0, sizeof headers);
    headers.kind = K_LIST;
    headers.of.list.size = n_headers;
    headers.of.list.data = header_vals;
    val_t *pairs = header_vals + n_headers;
    for (uint32_t h = 0; h < n_headers; h++) {
        val_t *tuple = header_vals + h;
        memset(tuple, 0, sizeof *tuple);
        tuple->kind = K_TUPLE;
        tuple->of.list.size = 2;
        tuple->of.list.data = pairs + 2 * h;
        for (int j = 0; j < 2; j++) {
            uint32_t size = length(blob, S_FIXED + 2 * (size_t)h + (size_t)j);
            pairs[2 * h + (uint32_t)j] = string_val((const char *)p, size);
            p += size;
        }
    }

    set_entry(&request[0], "method", string_val(s[S_METHOD], n[S_METHOD]));
    set_entry(&request[1], "url", string_val(s[S_URL], n[S_URL]));
    set_entry(&request[2], "headers", headers);
    set_entry(&request[3], "body", string_val((const char *)body, body_size));
    set_entry(&request[4], "client-ip", string_val(s[S_CLIENT_IP], n[S_CLIENT_IP]));
    set_entry(&request[5], "context", record_val(context, 4));
    set_entry(&context[0], "region", string_val(s[S_REGION], n[S_REGION]));
    set_entry(&context[1], "node-id", string_val(s[S_NODE_ID], n[S_NODE_ID]));
    set_entry(&context[2], "request-id", string_val(s[S_REQUEST_ID], n[S_REQUEST_ID]));
    set_entry(&context[3], "geo", record_val(geo, 5));

    static const char *const geo_names[5] = {"country", "continent", "city", "latitude",
                                             "longitude"};
    for (int i = 0; i < 5; i++) {
        val_t option;
        memset(&option, 0, sizeof option);
        option.kind = K_OPTION;
        memset(&inner[i], 0, sizeof inner[i]);
        if (geo_flags & (1u << i)) {
            option.of.option = &inner[i];
            if (i < 3) {
                set_string(&inner[i], s[S_COUNTRY + i], n[S_COUNTRY + i]);
            } else {
                inner[i].kind = K_F64;
                inner[i].of.f64 = i == 3 ? latitude : longitude;
            }
        }
        set_entry(&geo[i], geo_names[i], option);
    }
    return root;
}

/* Copies the response out of `result` (which the caller deletes). Returns DONE or BAD_RESPONSE
 * or OUT_OF_MEMORY, with out->problem and out->detail set for the latter two. */
static int lift(struct buffer *headers_out, struct buffer *body_out, const val_t *result,
                uint64_t body_limit, struct edge_out *out) {
    if (result->kind != K_RECORD || result->of.record.size != 3)
        return out->problem = P_SHAPE, BAD_RESPONSE;
    const entry_t *e = result->of.record.data;
    /* Load checked the export's type, and wasmtime builds the record in type order. */
    if (e[0].val.kind != K_U16 || e[1].val.kind != K_LIST || e[2].val.kind != K_STRING)
        return out->problem = P_SHAPE, BAD_RESPONSE;
    out->status = e[0].val.of.u16;

    const vals_t *list = &e[1].val.of.list;
    size_t need = 0;
    for (size_t i = 0; i < list->size; i++) {
        const val_t *t = &list->data[i];
        if (t->kind != K_TUPLE || t->of.list.size != 2 || t->of.list.data[0].kind != K_STRING ||
            t->of.list.data[1].kind != K_STRING)
            return out->problem = P_SHAPE, BAD_RESPONSE;
        need += 8 + t->of.list.data[0].of.string.size + t->of.list.data[1].of.string.size;
    }
    uint8_t *h = reserve(headers_out, need);
    if (!h && need)
        return OUT_OF_MEMORY;
    out->headers = h;
    out->headers_size = need;
    out->n_headers = list->size;
    for (size_t i = 0; i < list->size; i++) {
        const name_t *name = &list->data[i].of.list.data[0].of.string;
        const name_t *value = &list->data[i].of.list.data[1].of.string;
        uint32_t sizes[2] = {(uint32_t)name->size, (uint32_t)value->size};
        memcpy(h, sizes, 8);
        memcpy(h + 8, name->data, name->size);
        memcpy(h + 8 + name->size, value->data, value->size);
        h += 8 + name->size + value->size;
    }

    const name_t *body = &e[2].val.of.string;
    /* Decoding never grows the size, so the encoded size bounds the work before it is done. */
    if (body->size > 2 * body_limit)
        return out->problem = P_BODY_OVER_LIMIT, out->detail = body->size, BAD_RESPONSE;
    uint8_t *b = reserve(body_out, body->size);
    if (!b && body->size)
        return OUT_OF_MEMORY;
    size_t n = 0;
    if (!decode_body((const uint8_t *)body->data, body->size, b, &n, &out->detail))
        return out->problem = P_BODY_CODE_POINT, BAD_RESPONSE;
    if (n > body_limit)
        return out->problem = P_BODY_OVER_LIMIT, out->detail = n, BAD_RESPONSE;
    out->body = b;
    out->body_size = n;
    return DONE;
}

/* --- host functions ------------------------------------------------------------------------
 * Our imports for functions without WASI, as C callbacks: they run on whatever thread runs the
 * request, without the GIL. `log.write` and `config.get` are recorded in order as events the
 * caller replays in Python once the call is over (edge.sandbox.native_invoke): what a line
 * says and when, and that config was read (which ends a standing exception report, see
 * host._config_get). A store's data is its request's `struct call`. */

enum { MAX_LINES = 200 };             /* host.MAX_LOG_LINES_PER_REQUEST */
enum { MAX_LINE_BYTES = 4 * 4096 + 4 }; /* over host.MAX_LOG_LINE_BYTES characters, surely */
enum { EVENT_LOG = 1, EVENT_CONFIG = 2 };

/* An event in the buffer: header, then `size` message bytes. */
struct event {
    uint8_t kind;
    uint8_t level; /* index in host.LOG_LEVELS */
    uint16_t pad;
    uint32_t size;
    int64_t time_ns;
};

struct call {
    struct buffer *events;
    size_t events_size;
    uint64_t lines;
    uint64_t dropped;
    int last_config; /* the last event is a config read: another one says nothing new */
    const uint8_t *config; /* u32 count, then per entry u32 key size, u32 value size, bytes */
};

static int add_event(struct call *c, int kind, int level, const char *data, size_t size) {
    size_t at = c->events_size;
    uint8_t *buf = reserve(c->events, at + sizeof(struct event) + size);
    if (!buf)
        return 0;
    struct event e = {(uint8_t)kind, (uint8_t)level, 0, (uint32_t)size, now_ns(CLOCK_REALTIME)};
    memcpy(buf + at, &e, sizeof e);
    if (size)
        memcpy(buf + at + sizeof e, data, size);
    c->events_size = at + sizeof e + size;
    return 1;
}

static const char *const levels[] = {"trace", "debug", "info", "warn", "error"};

static void *log_write(void *env, void *context, const void *type, val_t *args, size_t nargs,
                       val_t *results, size_t nresults) {
    (void)env, (void)type, (void)results, (void)nresults;
    struct call *c = context_get_data(context);
    if (nargs != 2 || args[1].kind != K_STRING)
        return NULL; /* the linker checked the signature: never */
    int level = 2;
    for (int i = 0; i < 5; i++) {
        const name_t *n = &args[0].of.string; /* an enum's case name has a string's layout */
        if (n->size == strlen(levels[i]) && memcmp(n->data, levels[i], n->size) == 0)
            level = i;
    }
    c->last_config = 0;
    if (c->lines >= MAX_LINES) {
        c->dropped++;
        return NULL;
    }
    const name_t *m = &args[1].of.string;
    size_t size = m->size;
    if (size > MAX_LINE_BYTES) { /* cut on a character boundary: Python decodes it */
        size = MAX_LINE_BYTES;
        while (size > 0 && ((uint8_t)m->data[size] & 0xC0) == 0x80)
            size--;
    }
    if (add_event(c, EVENT_LOG, level, m->data, size))
        c->lines++;
    else
        c->dropped++;
    return NULL;
}

static uint32_t u32_at(const uint8_t *p) {
    uint32_t n;
    memcpy(&n, p, 4);
    return n;
}

static void *config_get(void *env, void *context, const void *type, val_t *args, size_t nargs,
                        val_t *results, size_t nresults) {
    (void)env, (void)type;
    struct call *c = context_get_data(context);
    if (nargs != 1 || nresults != 1 || args[0].kind != K_STRING)
        return NULL; /* the linker checked the signature: never */
    if (!c->last_config && add_event(c, EVENT_CONFIG, 0, NULL, 0))
        c->last_config = 1;
    const name_t *key = &args[0].of.string;
    results[0].kind = K_OPTION;
    results[0].of.option = NULL;
    const uint8_t *p = c->config;
    uint32_t count = 0;
    if (p) {
        count = u32_at(p);
        p += 4;
    }
    for (uint32_t i = 0; i < count; i++) {
        uint32_t ks = u32_at(p), vs = u32_at(p + 4);
        const char *k = (const char *)p + 8, *v = k + ks;
        p += 8 + ks + vs;
        if (ks == key->size && memcmp(k, key->data, ks) == 0) {
            val_t value;
            memset(&value, 0, sizeof value);
            value.kind = K_STRING;
            byte_vec_new(&value.of.string, vs, v); /* wasmtime frees what it owns */
            results[0].of.option = val_new(&value);
            break;
        }
    }
    return NULL;
}

/* A linker for a component importing `names` (NUL-separated, of our interfaces only) whose
 * functions are the callbacks above; NULL if one could not be defined. */
EXPORT void *edge_linker_new(void *engine, const char *names, size_t size) {
    void *linker = linker_new(engine);
    void *root = linker_root(linker);
    void *error = NULL;
    for (const char *name = names; !error && name < names + size; name += strlen(name) + 1) {
        void *instance = NULL;
        error = instance_add_instance(root, name, strlen(name), &instance);
        if (error)
            break;
        if (strncmp(name, "edge:function/log@", 18) == 0)
            error = instance_add_func(instance, "write", 5, log_write, NULL, NULL);
        else if (strncmp(name, "edge:function/config@", 21) == 0)
            error = instance_add_func(instance, "get", 3, config_get, NULL, NULL);
        linker_instance_delete(instance);
    }
    linker_instance_delete(root);
    if (error) {
        error_delete(error);
        linker_delete(linker);
        return NULL;
    }
    return linker;
}

EXPORT void edge_linker_delete(void *linker) { linker_delete(linker); }

/* One request's arguments (see edge_invoke_fresh). */
struct edge_args {
    const struct edge_code *code;
    uint64_t deadline_ticks;
    uint64_t measure_cpu;
    const uint8_t *blob;
    uint64_t n_headers;
    uint64_t geo_flags;
    double latitude;
    double longitude;
    const uint8_t *config; /* for config.get (see struct call) */
};

static void run_fresh(const struct edge_args *a, struct buffer *arena, struct buffer *headers,
                      struct buffer *body, struct buffer *events, struct edge_out *out) {
    memset(out, 0, sizeof *out);
    val_t *param = lower(arena, a->blob, (uint32_t)a->n_headers, (uint32_t)a->geo_flags,
                         a->latitude, a->longitude);
    if (!param) {
        out->stage = OUT_OF_MEMORY;
        return;
    }
    const struct edge_code *code = a->code;
    out->wall_ns[0] = now_ns(CLOCK_REALTIME);
    int64_t started = now_ns(CLOCK_MONOTONIC);
    int64_t started_cpu = a->measure_cpu ? now_ns(CLOCK_THREAD_CPUTIME_ID) : 0;
    /* Instantiation runs guest start code, so the deadline applies from here. */
    struct call call = {events, 0, 0, 0, 0, a->config};
    void *store = store_new(code->engine, &call, NULL);
    void *context = store_context(store);
    store_limiter(store, code->memory_limit_bytes, -1, -1, -1, -1);
    set_epoch_deadline(context, a->deadline_ticks);
    instance_t instance;
    func_t func;
    out->error = linker_instantiate(code->linker, context, code->component, &instance);
    out->instantiate_ns = now_ns(CLOCK_MONOTONIC) - started;
    if (a->measure_cpu)
        out->instantiate_cpu_ns = now_ns(CLOCK_THREAD_CPUTIME_ID) - started_cpu;
    out->wall_ns[1] = now_ns(CLOCK_REALTIME);
    if (out->error) {
        out->stage = FAILED_INSTANTIATE;
        store_delete(store);
        return;
    }
    instance_get_func(&instance, context, code->index, &func); /* load checked the export */
    val_t result;
    memset(&result, 0, sizeof result);
    out->wall_ns[2] = now_ns(CLOCK_REALTIME);
    out->error = func_call(&func, context, param, 1, &result, 1);
    out->wall_ns[3] = now_ns(CLOCK_REALTIME);
    out->events = events->data;
    out->events_size = call.events_size;
    out->dropped = call.dropped;
    if (out->error) {
        out->stage = FAILED_CALL;
        store_delete(store);
        return;
    }
    out->stage = lift(headers, body, &result, code->response_body_limit_bytes, out);
    val_delete(&result);
    if (out->stage == DONE) {
        out->error = func_post_return(&func, context);
        if (out->error)
            out->stage = FAILED_POST_RETURN;
    }
    store_delete(store);
}

EXPORT void edge_invoke_fresh(const struct edge_args *args, struct edge_out *out) {
    struct buffers *b = thread_buffers();
    if (!b) {
        memset(out, 0, sizeof *out);
        out->stage = OUT_OF_MEMORY;
        return;
    }
    run_fresh(args, &b->arena, &b->headers, &b->body, &b->events, out);
}

/* --- worker threads ---------------------------------------------------------------------------
 * Requests queued by the event loop's thread and run on native threads that never take the GIL
 * (a function's host imports excepted); each finished job is put on the done list and the
 * eventfd is written, which the event loop watches.
 *
 * At most `awake_max` workers are awake at once (about one per core beside the event loop's):
 * a job queued while that many are awake waits for one of them to finish, which then takes it
 * without going to sleep, instead of waking one more thread to fight them and the loop for the
 * cores (each wake-up is a futex call on the loop's thread and two thread switches). So that a
 * slow function cannot hold up the jobs behind it, a watcher thread wakes one more worker
 * whenever the oldest queued job has waited SPARE_AFTER_NS, as long as any are idle. */

#define SPARE_AFTER_NS 1000000L /* 1 ms: a C hello's whole run is ~30 µs */

struct edge_job {
    struct edge_args args;
    struct edge_out out;
    struct buffer headers, body, events; /* the job's own: read after the worker moved on */
    struct edge_job *next;
    int64_t queued_ns; /* CLOCK_MONOTONIC */
};

/* A worker thread. Idle ones wait on their own condition variable, on a stack: a job wakes the
 * one that went idle last, whose caches (its stack, its arena, wasmtime's per-thread state) are
 * the warmest, so a lightly loaded node keeps reusing one or two threads instead of cycling
 * through all of them. */
struct worker {
    struct edge_pool *pool;
    pthread_t id;
    pthread_cond_t wake;
    int woken;
    struct worker *next_idle;
};

struct edge_pool {
    pthread_mutex_t lock;
    struct edge_job *head, *tail; /* queued */
    struct edge_job *done;        /* finished, newest first */
    struct worker *idle;          /* waiting, the last one to go idle first */
    int efd;
    int stop;
    size_t threads;
    size_t awake;     /* workers not on the idle stack (running a job, or woken for one) */
    size_t awake_max; /* beyond it, a job waits for an awake worker (or the watcher) */
    struct worker *workers;
    pthread_t watcher;
    pthread_cond_t watch; /* the watcher's, on CLOCK_MONOTONIC */
    int watched;          /* the watcher is timing the queue (or told to) */
    int has_watcher;
    uint64_t woken, spared; /* idle workers woken for a job: on its queueing, by the watcher */
    size_t peak;            /* the most awake right after a wake-up */
    int nice;               /* added to the workers' nice value (0: as the process's) */
};

EXPORT size_t edge_pool_size(void) { return sizeof(struct edge_pool); }
EXPORT size_t edge_job_size(void) { return sizeof(struct edge_job); }

static void *work(void *arg) {
    struct worker *self = arg;
    struct edge_pool *p = self->pool;
    struct buffer arena = {0};
    /* Below the event loop's thread, so HTTP (health checks included) goes first when
     * functions keep every core busy. Best effort: lowering one's own priority needs no right. */
    if (p->nice) {
        errno = 0;
        int base = getpriority(PRIO_PROCESS, 0); /* this thread's, as its creator's */
        int nice = errno ? p->nice : base + p->nice;
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice < 19 ? nice : 19);
    }
    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (!p->head && !p->stop) {
            self->woken = 0;
            self->next_idle = p->idle;
            p->idle = self;
            p->awake--;
            while (!self->woken && !p->stop)
                pthread_cond_wait(&self->wake, &p->lock);
            if (!self->woken) /* stopping: still on the stack, but awake again */
                p->awake++;
        }
        struct edge_job *job = p->head;
        if (!job) {
            pthread_mutex_unlock(&p->lock);
            break;
        }
        p->head = job->next;
        if (!p->head)
            p->tail = NULL;
        pthread_mutex_unlock(&p->lock);

        run_fresh(&job->args, &arena, &job->headers, &job->body, &job->events, &job->out);

        pthread_mutex_lock(&p->lock);
        job->next = p->done;
        int wake = p->done == NULL; /* else the loop has a wake-up coming already */
        p->done = job;
        pthread_mutex_unlock(&p->lock);
        if (wake) {
            uint64_t one = 1;
            ssize_t n = write(p->efd, &one, sizeof one);
            (void)n; /* a full counter (never, at 2^64 - 1) still wakes the loop */
        }
    }
    free(arena.data);
    return NULL;
}

/* Pops an idle worker and wakes it (the lock held); false when none is idle. */
static int wake_idle(struct edge_pool *p) {
    struct worker *w = p->idle;
    if (!w)
        return 0;
    p->idle = w->next_idle;
    w->woken = 1;
    p->awake++;
    if (p->awake > p->peak)
        p->peak = p->awake;
    pthread_cond_signal(&w->wake);
    return 1;
}

static void *watch(void *arg) {
    struct edge_pool *p = arg;
    pthread_mutex_lock(&p->lock);
    while (!p->stop) {
        if (!p->watched || !p->head) {
            p->watched = 0;
            pthread_cond_wait(&p->watch, &p->lock);
            continue;
        }
        int64_t due = p->head->queued_ns + SPARE_AFTER_NS;
        if (now_ns(CLOCK_MONOTONIC) >= due) {
            /* The awake workers are all busy with slow jobs: one more takes the oldest. If
             * none is idle, all are awake, and the next to finish takes it. */
            if (wake_idle(p))
                p->spared++;
            else
                p->watched = 0;
            due = now_ns(CLOCK_MONOTONIC) + SPARE_AFTER_NS; /* one spare per interval */
        }
        struct timespec until = {(time_t)(due / 1000000000L), (long)(due % 1000000000L)};
        pthread_cond_timedwait(&p->watch, &p->lock, &until);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* `awake_max`: workers awake at once before a queued job waits for one (0: all of them);
 * `nice`: added to the workers' nice value (0: unchanged). */
EXPORT int edge_pool_start(struct edge_pool *p, size_t threads, size_t awake_max, int nice) {
    memset(p, 0, sizeof *p);
    p->nice = nice;
    pthread_mutex_init(&p->lock, NULL);
    p->awake_max = awake_max ? awake_max : threads;
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0)
        return errno;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&p->watch, &attr);
    pthread_condattr_destroy(&attr);
    int rc = pthread_create(&p->watcher, NULL, watch, p);
    if (rc)
        return rc;
    p->has_watcher = 1;
    p->workers = calloc(threads, sizeof *p->workers);
    if (!p->workers)
        return ENOMEM;
    for (size_t i = 0; i < threads; i++) {
        struct worker *w = &p->workers[i];
        w->pool = p;
        pthread_cond_init(&w->wake, NULL);
        pthread_mutex_lock(&p->lock); /* counted awake until it first goes idle */
        p->awake++;
        pthread_mutex_unlock(&p->lock);
        rc = pthread_create(&w->id, NULL, work, w);
        if (rc) {
            pthread_mutex_lock(&p->lock);
            p->awake--;
            pthread_mutex_unlock(&p->lock);
            pthread_cond_destroy(&w->wake);
            return rc;
        }
        p->threads++;
    }
    return 0;
}

EXPORT int edge_pool_eventfd(const struct edge_pool *p) { return p->efd; }

EXPORT void edge_pool_submit(struct edge_pool *p, struct edge_job *job) {
    job->next = NULL;
    pthread_mutex_lock(&p->lock);
    if (p->tail)
        p->tail->next = job;
    else
        p->head = job;
    p->tail = job;
    job->queued_ns = now_ns(CLOCK_MONOTONIC);
    /* None idle: an awake one takes it when it is done. */
    if (p->awake < p->awake_max && wake_idle(p)) {
        p->woken++;
    } else {
        if (p->idle && !p->watched) {
            p->watched = 1;
            pthread_cond_signal(&p->watch);
        }
    }
    pthread_mutex_unlock(&p->lock);
}

/* Up to `cap` finished jobs into `out`, oldest first; returns how many. Jobs beyond `cap` stay
 * on the done list, and the eventfd is written again so the loop comes back for them. */
EXPORT size_t edge_pool_take(struct edge_pool *p, struct edge_job **out, size_t cap) {
    uint64_t count;
    ssize_t n = read(p->efd, &count, sizeof count); /* clears the wake-up (EAGAIN if none) */
    (void)n;
    pthread_mutex_lock(&p->lock);
    struct edge_job *newest = p->done;
    p->done = NULL;
    /* Reverse into oldest first. */
    struct edge_job *oldest = NULL;
    while (newest) {
        struct edge_job *next = newest->next;
        newest->next = oldest;
        oldest = newest;
        newest = next;
    }
    size_t taken = 0;
    while (oldest && taken < cap) {
        out[taken++] = oldest;
        oldest = oldest->next;
    }
    int more = oldest != NULL;
    while (oldest) { /* back, newest first again */
        struct edge_job *next = oldest->next;
        oldest->next = p->done;
        p->done = oldest;
        oldest = next;
    }
    pthread_mutex_unlock(&p->lock);
    if (more) {
        uint64_t one = 1;
        n = write(p->efd, &one, sizeof one);
        (void)n;
    }
    return taken;
}

/* Stops the threads once the queue is empty, and waits for them. */
EXPORT void edge_pool_stop(struct edge_pool *p) {
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    for (size_t i = 0; i < p->threads; i++)
        pthread_cond_signal(&p->workers[i].wake);
    pthread_cond_signal(&p->watch);
    pthread_mutex_unlock(&p->lock);
    for (size_t i = 0; i < p->threads; i++) {
        pthread_join(p->workers[i].id, NULL);
        pthread_cond_destroy(&p->workers[i].wake);
    }
    if (p->has_watcher) {
        pthread_join(p->watcher, NULL);
        p->has_watcher = 0;
    }
    free(p->workers);
    p->workers = NULL;
    p->threads = 0;
}

/* out: idle workers woken for a job on its queueing, and by the watcher (see SPARE_AFTER_NS);
 * workers awake now, and the most awake right after a wake-up. */
EXPORT void edge_pool_stats(struct edge_pool *p, uint64_t *out) {
    pthread_mutex_lock(&p->lock);
    out[0] = p->woken;
    out[1] = p->spared;
    out[2] = p->awake;
    out[3] = p->peak;
    pthread_mutex_unlock(&p->lock);
}

/* After edge_pool_stop and the last edge_pool_take. */
EXPORT void edge_pool_free(struct edge_pool *p) {
    if (p->efd >= 0)
        close(p->efd);
    p->efd = -1;
    pthread_cond_destroy(&p->watch);
    pthread_mutex_destroy(&p->lock);
}

/* What a job's output buffers hold (their capacity, not what the last answer used). */
EXPORT size_t edge_job_held(const struct edge_job *job) {
    return job->headers.cap + job->body.cap + job->events.cap;
}

/* Frees a job's output buffers (the job itself is the caller's memory). */
EXPORT void edge_job_release(struct edge_job *job) {
    free(job->headers.data);
    free(job->body.data);
    free(job->events.data);
    job->headers.data = job->body.data = job->events.data = NULL;
    job->headers.cap = job->body.cap = job->events.cap = 0;
}
