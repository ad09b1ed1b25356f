/* The event loop's side of a native request, as a CPython extension (module edge_wire): packing
 * a request into struct edge_args and its blob (invoke.c), and reading struct edge_out back into
 * an Outcome. The Python versions in edge/sandbox/native_invoke.py (pack, outcome_at) do the
 * same with struct and ctypes at ~3 µs each per request on the loop's thread, which is what
 * bounds a node's requests/s under load; these take a fraction of that. It also calls the
 * native pool's and ticker's functions for native_pool (submit, take, done) without ctypes. Python's versions stay:
 * they are the reference the tests compare these with, serve where this cannot be built (no
 * Python headers), and read every outcome this one leaves to them (errors, bad headers).
 *
 * Layouts are invoke.c's; native_invoke.py's ARGS and _OUT describe them for Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The blob's sizes and the events' fields are copied in the host's byte order, where
 * native_invoke.py's struct formats say little-endian: elsewhere this helper is not built
 * (named at load) and requests take the Python path. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "wire.c supports little-endian hosts only"
#endif

enum { S_FIXED = 10 }; /* method, url, body, client-ip, region, node-id, request-id, geo x3 */
enum { DONE = 0, FAILED_POST_RETURN = 4 };

struct edge_args {
    uint64_t code;
    uint64_t deadline_ticks;
    uint64_t measure_cpu;
    uint64_t blob;
    uint64_t n_headers;
    uint64_t geo_flags;
    double latitude;
    double longitude;
    uint64_t config;
};

struct edge_out {
    int64_t stage, problem;
    uint64_t error, detail, status, n_headers, headers, headers_size, body, body_size;
    int64_t instantiate_ns, instantiate_cpu_ns, wall_ns[4];
    uint64_t events, events_size, dropped;
};

/* Names looked up per request, interned once. */
static PyObject *s_address, *s_method, *s_url, *s_headers, *s_body, *s_client_ip, *s_region,
    *s_node_id, *s_request_id, *s_geo, *s_country, *s_continent, *s_city, *s_latitude,
    *s_longitude;
/* The classes outcome() builds (set by configure()). */
static PyObject *outcome_type, *response_type;

struct piece {
    const char *data;
    Py_ssize_t size;
};

/* `obj`'s UTF-8 bytes (a str; None as empty when `optional`). Borrowed from `obj`, which the
 * caller keeps alive; for an ASCII str, CPython's own buffer, with no copy. */
static int utf8(PyObject *obj, struct piece *out, int optional) {
    if (optional && obj == Py_None) {
        out->data = "";
        out->size = 0;
        return 0;
    }
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "expected str, not %.80s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    out->data = PyUnicode_AsUTF8AndSize(obj, &out->size);
    return out->data ? 0 : -1;
}

static uint64_t address_of(PyObject *job) {
    PyObject *a = PyObject_GetAttr(job, s_address);
    if (!a)
        return 0;
    uint64_t v = PyLong_AsUnsignedLongLong(a);
    Py_DECREF(a);
    return (v == (uint64_t)-1 && PyErr_Occurred()) ? 0 : v;
}

/* pack(job, call, req) -> bytes: writes struct edge_args at job.address and returns the blob it
 * points into, which must stay alive until the helper has run (as must call.config). */
static PyObject *pack(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "pack(job, call, req) takes 3 arguments");
        return NULL;
    }
    PyObject *call = args[1], *req = args[2];
    uint64_t address = address_of(args[0]);
    if (!address)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "job at address 0");
    if (!PyTuple_Check(call) || PyTuple_GET_SIZE(call) != 4) {
        PyErr_SetString(PyExc_TypeError, "call must be a Call (native, ticks, measure_cpu, config)");
        return NULL;
    }
    PyObject *config = PyTuple_GET_ITEM(call, 3);
    if (!PyBytes_Check(config)) {
        PyErr_SetString(PyExc_TypeError, "call.config must be bytes");
        return NULL;
    }
    uint64_t code = address_of(PyTuple_GET_ITEM(call, 0));
    if (!code)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "code at address 0");
    uint64_t ticks = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(call, 1));
    if (ticks == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    int measure = PyObject_IsTrue(PyTuple_GET_ITEM(call, 2));
    if (measure < 0)
        return NULL;

    /* Everything read from `req` is held in `owned` until the blob is written. */
    static PyObject *const *names[] = {&s_method, &s_url, &s_client_ip, &s_region, &s_node_id,
                                       &s_request_id};
    PyObject *owned[16] = {0};
    int n_owned = 0;
    PyObject *result = NULL, *headers = NULL;
    Py_buffer body = {0};
    int have_body = 0;
    struct piece fixed[S_FIXED];
    struct piece *pieces = NULL;
    uint64_t flags = 0;
    double coords[2] = {0.0, 0.0};

    for (int i = 0; i < 6; i++) {
        PyObject *v = owned[n_owned++] = PyObject_GetAttr(req, *names[i]);
        if (!v || utf8(v, &fixed[i < 2 ? i : i + 1], 0))
            goto done;
    }
    PyObject *body_obj = owned[n_owned++] = PyObject_GetAttr(req, s_body);
    if (!body_obj || PyObject_GetBuffer(body_obj, &body, PyBUF_SIMPLE))
        goto done;
    have_body = 1;
    fixed[2].data = body.buf;
    fixed[2].size = body.len;
    PyObject *geo = owned[n_owned++] = PyObject_GetAttr(req, s_geo);
    if (!geo)
        goto done;
    PyObject *const *geo_names[] = {&s_country, &s_continent, &s_city};
    for (int i = 0; i < 3; i++) {
        PyObject *v = owned[n_owned++] = PyObject_GetAttr(geo, *geo_names[i]);
        if (!v || utf8(v, &fixed[7 + i], 1))
            goto done;
        flags |= (uint64_t)(v != Py_None) << i;
    }
    PyObject *const *coord_names[] = {&s_latitude, &s_longitude};
    for (int i = 0; i < 2; i++) {
        PyObject *v = owned[n_owned++] = PyObject_GetAttr(geo, *coord_names[i]);
        if (!v)
            goto done;
        if (v != Py_None) {
            coords[i] = PyFloat_AsDouble(v);
            if (coords[i] == -1.0 && PyErr_Occurred())
                goto done;
            flags |= (uint64_t)1 << (3 + i);
        }
    }

    PyObject *headers_obj = owned[n_owned++] = PyObject_GetAttr(req, s_headers);
    if (!headers_obj)
        goto done;
    headers = PySequence_Fast(headers_obj, "request headers must be a sequence");
    if (!headers)
        goto done;
    Py_ssize_t n_headers = PySequence_Fast_GET_SIZE(headers);
    Py_ssize_t n = S_FIXED + 2 * n_headers;
    pieces = PyMem_Malloc(sizeof *pieces * (size_t)n);
    if (!pieces) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(pieces, fixed, sizeof fixed);
    for (Py_ssize_t h = 0; h < n_headers; h++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(headers, h);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "a request header must be a (name, value) tuple");
            goto done;
        }
        /* Borrowed from the tuple, which the list (held by `headers`) keeps. */
        if (utf8(PyTuple_GET_ITEM(pair, 0), &pieces[S_FIXED + 2 * h], 0) ||
            utf8(PyTuple_GET_ITEM(pair, 1), &pieces[S_FIXED + 2 * h + 1], 0))
            goto done;
    }

    Py_ssize_t total = 4 * n;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (pieces[i].size > (Py_ssize_t)UINT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "a request string is over 4 GiB");
            goto done;
        }
        total += pieces[i].size;
    }
    PyObject *blob = PyBytes_FromStringAndSize(NULL, total);
    if (!blob)
        goto done;
    char *at = PyBytes_AS_STRING(blob);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t size = (uint32_t)pieces[i].size;
        memcpy(at + 4 * i, &size, 4); /* little-endian hosts only, as struct's "<I" is */
    }
    at += 4 * n;
    for (Py_ssize_t i = 0; i < n; i++) {
        memcpy(at, pieces[i].data, (size_t)pieces[i].size);
        at += pieces[i].size;
    }
    struct edge_args a = {
        .code = code,
        .deadline_ticks = ticks,
        .measure_cpu = (uint64_t)measure,
        .blob = (uint64_t)(uintptr_t)PyBytes_AS_STRING(blob),
        .n_headers = (uint64_t)n_headers,
        .geo_flags = flags,
        .latitude = coords[0],
        .longitude = coords[1],
        .config = (uint64_t)(uintptr_t)PyBytes_AS_STRING(config),
    };
    memcpy((void *)(uintptr_t)address, &a, sizeof a);
    result = blob;
done:
    if (have_body)
        PyBuffer_Release(&body);
    PyMem_Free(pieces);
    Py_XDECREF(headers);
    for (int i = 0; i < n_owned; i++)
        Py_XDECREF(owned[i]);
    return result;
}

static PyObject *bytes_at(uint64_t address, uint64_t size) {
    if (!size)
        return PyBytes_FromStringAndSize("", 0);
    return PyBytes_FromStringAndSize((const char *)(uintptr_t)address, (Py_ssize_t)size);
}

/* The lifted headers: per header u32 name size, u32 value size, name, value. NULL with no
 * exception set when they do not decode (or do not fit): Python's reader says why. */
static PyObject *headers_at(const uint8_t *raw, uint64_t size, uint64_t n) {
    if (n > size / 8)
        return NULL;
    PyObject *out = PyList_New((Py_ssize_t)n);
    if (!out)
        return NULL;
    uint64_t at = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t sizes[2];
        if (size - at < 8)
            goto bad;
        memcpy(sizes, raw + at, 8);
        at += 8;
        if (size - at < (uint64_t)sizes[0] + sizes[1])
            goto bad;
        PyObject *name = PyUnicode_DecodeUTF8((const char *)raw + at, sizes[0], NULL);
        if (!name)
            goto bad;
        PyObject *value = PyUnicode_DecodeUTF8((const char *)raw + at + sizes[0], sizes[1], NULL);
        if (!value) {
            Py_DECREF(name);
            goto bad;
        }
        at += (uint64_t)sizes[0] + sizes[1];
        PyObject *pair = PyTuple_Pack(2, name, value);
        Py_DECREF(name);
        Py_DECREF(value);
        if (!pair) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, pair);
    }
    return out;
bad:
    if (!PyErr_ExceptionMatches(PyExc_MemoryError))
        PyErr_Clear(); /* not decodable: declined, for Python's reader to explain */
    Py_DECREF(out);
    return NULL;
}

/* outcome(job, at) -> Outcome | None: the struct edge_out at job.address + at, read as
 * native_invoke.outcome_at reads it, when its stage is DONE or FAILED_POST_RETURN and its headers
 * decode; None for everything else, which outcome_at then reads (and explains). */
static PyObject *outcome(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "outcome(job, at) takes 2 arguments");
        return NULL;
    }
    if (!outcome_type || !response_type) {
        PyErr_SetString(PyExc_RuntimeError, "edge_wire.configure() was not called");
        return NULL;
    }
    uint64_t address = address_of(args[0]);
    if (!address)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "job at address 0");
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at < 0)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "negative offset");
    struct edge_out o;
    memcpy(&o, (const void *)(uintptr_t)(address + (uint64_t)at), sizeof o);
    if (o.stage != DONE && o.stage != FAILED_POST_RETURN)
        Py_RETURN_NONE;
    PyObject *headers = headers_at((const uint8_t *)(uintptr_t)o.headers, o.headers_size,
                                   o.n_headers);
    if (!headers) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *result = NULL, *response = NULL, *body = NULL, *events = NULL, *wall = NULL;
    PyObject *fields[9] = {0};
    body = bytes_at(o.body, o.body_size);
    PyObject *status = PyLong_FromUnsignedLongLong(o.status);
    if (body && status) {
        PyObject *parts[3] = {status, headers, body};
        response = PyObject_Vectorcall(response_type, parts, 3, NULL);
    }
    Py_XDECREF(status);
    events = bytes_at(o.events, o.events_size);
    wall = Py_BuildValue("(LLLL)", (long long)o.wall_ns[0], (long long)o.wall_ns[1],
                         (long long)o.wall_ns[2], (long long)o.wall_ns[3]);
    if (!response || !events || !wall)
        goto done;
    fields[0] = PyLong_FromLongLong(o.stage);
    fields[1] = PyLong_FromUnsignedLongLong(o.error);
    fields[4] = PyFloat_FromDouble((double)o.instantiate_ns / 1e9);
    fields[5] = PyFloat_FromDouble((double)o.instantiate_cpu_ns / 1e9);
    fields[8] = PyLong_FromUnsignedLongLong(o.dropped);
    if (!fields[0] || !fields[1] || !fields[4] || !fields[5] || !fields[8])
        goto done;
    fields[2] = response;
    fields[3] = Py_None;
    fields[6] = wall;
    fields[7] = events;
    result = PyObject_Vectorcall(outcome_type, fields, 9, NULL);
done:
    Py_XDECREF(fields[0]);
    Py_XDECREF(fields[1]);
    Py_XDECREF(fields[4]);
    Py_XDECREF(fields[5]);
    Py_XDECREF(fields[8]);
    Py_XDECREF(response);
    Py_XDECREF(body);
    Py_XDECREF(events);
    Py_XDECREF(wall);
    Py_DECREF(headers);
    return result;
}

/* The pool's and the ticker's C functions (invoke.c, ticker.c), called here directly: through
 * ctypes each call costs ~0.5 µs of argument conversion, several times a request. */
typedef void (*submit_fn)(void *pool, void *job);
typedef size_t (*take_fn)(void *pool, void **out, size_t cap);
typedef size_t (*held_fn)(void *job);
typedef void (*release_fn)(void *job);
typedef void (*ticker_fn)(void *ticker);

static int addresses(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, uint64_t *out,
                     const char *usage) {
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    for (Py_ssize_t i = 0; i < want; i++) {
        out[i] = PyLong_AsUnsignedLongLong(args[i]);
        if (out[i] == (uint64_t)-1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

#define FN(type, value) ((type)(uintptr_t)(value))
#define PTR(value) ((void *)(uintptr_t)(value))

/* submit(pool, job, submit_fn, enter_fn, ticker): enter_fn(ticker) unless enter_fn is 0 (the
 * Python ticker, entered by the caller), then submit_fn(pool, job). */
static PyObject *submit(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    uint64_t a[5];
    if (addresses(args, nargs, 5, a, "submit(pool, job, submit_fn, enter_fn, ticker)"))
        return NULL;
    if (!a[0] || !a[1] || !a[2] || (a[3] && !a[4]))
        return PyErr_Format(PyExc_ValueError, "submit: a null address");
    if (a[3])
        FN(ticker_fn, a[3])(PTR(a[4]));
    FN(submit_fn, a[2])(PTR(a[0]), PTR(a[1]));
    Py_RETURN_NONE;
}

/* take(pool, out, cap, take_fn) -> int: take_fn(pool, out, cap). */
static PyObject *take(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    uint64_t a[4];
    if (addresses(args, nargs, 4, a, "take(pool, out, cap, take_fn)"))
        return NULL;
    if (!a[0] || !a[1] || !a[3])
        return PyErr_Format(PyExc_ValueError, "take: a null address");
    return PyLong_FromSize_t(FN(take_fn, a[3])(PTR(a[0]), PTR(a[1]), (size_t)a[2]));
}

/* done(job, leave_fn, ticker, held_fn, release_fn, keep_bytes): after a job's answer was read:
 * leave_fn(ticker) unless leave_fn is 0, and the job's buffers freed when they hold more than
 * keep_bytes. */
static PyObject *done(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    uint64_t a[6];
    if (addresses(args, nargs, 6, a, "done(job, leave_fn, ticker, held_fn, release_fn, keep)"))
        return NULL;
    if (!a[0] || (a[1] && !a[2]) || !a[3] || !a[4])
        return PyErr_Format(PyExc_ValueError, "done: a null address");
    if (a[1])
        FN(ticker_fn, a[1])(PTR(a[2]));
    if (FN(held_fn, a[3])(PTR(a[0])) > a[5])
        FN(release_fn, a[4])(PTR(a[0]));
    Py_RETURN_NONE;
}

/* configure(Outcome, GuestResponse): the classes outcome() builds. */
static PyObject *configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "configure(Outcome, GuestResponse) takes 2 arguments");
        return NULL;
    }
    Py_XSETREF(outcome_type, Py_NewRef(args[0]));
    Py_XSETREF(response_type, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

/* The sizes of the structs as this file lays them out, for Python to compare with its own. */
static PyObject *layout(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return Py_BuildValue("(nn)", (Py_ssize_t)sizeof(struct edge_args),
                         (Py_ssize_t)sizeof(struct edge_out));
}

static PyMethodDef methods[] = {
    {"pack", (PyCFunction)(void (*)(void))pack, METH_FASTCALL, "pack(job, call, req) -> bytes"},
    {"outcome", (PyCFunction)(void (*)(void))outcome, METH_FASTCALL,
     "outcome(job, at) -> Outcome | None"},
    {"submit", (PyCFunction)(void (*)(void))submit, METH_FASTCALL,
     "submit(pool, job, submit_fn, enter_fn, ticker)"},
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL, "take(pool, out, cap, take_fn)"},
    {"done", (PyCFunction)(void (*)(void))done, METH_FASTCALL,
     "done(job, leave_fn, ticker, held_fn, release_fn, keep_bytes)"},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(Outcome, GuestResponse)"},
    {"layout", layout, METH_NOARGS, "layout() -> (sizeof edge_args, sizeof edge_out)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "edge_wire", "The loop's side of a native request (wire.c).", -1,
    methods, NULL, NULL, NULL, NULL,
};

#define INTERN(var, text)                                                                       \
    if (!(var = PyUnicode_InternFromString(text)))                                              \
        return NULL;

__attribute__((visibility("default"))) PyMODINIT_FUNC PyInit_edge_wire(void) {
    INTERN(s_address, "address");
    INTERN(s_method, "method");
    INTERN(s_url, "url");
    INTERN(s_headers, "headers");
    INTERN(s_body, "body");
    INTERN(s_client_ip, "client_ip");
    INTERN(s_region, "region");
    INTERN(s_node_id, "node_id");
    INTERN(s_request_id, "request_id");
    INTERN(s_geo, "geo");
    INTERN(s_country, "country");
    INTERN(s_continent, "continent");
    INTERN(s_city, "city");
    INTERN(s_latitude, "latitude");
    INTERN(s_longitude, "longitude");
    return PyModule_Create(&module);
}
