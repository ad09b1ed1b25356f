"""JavaScript stack positions in a function's error log, mapped back to the author's files.

`edge build` bundles a JS function with esbuild, so the engine's stack names the bundle
(`parseAmount@bundle.js:195:11`). The build puts esbuild's source map, its `sources` made
relative to the project, into a custom section of the component (SECTION). It lives there, not
beside the component, because the component is the one thing the control plane stores, hashes,
signs and pushes, and the compile cache keys: a node holding a version holds its map, which can
never belong to another build. Custom sections are allowed anywhere in a component; wasmtime
skips them, the upload check accepts them (section id 0) and the memory.grow rewrite copies
top-level sections as they are.

The host keeps the section's bytes (at most MAX_MAP_BYTES) when it loads a function and decodes
them only when a log line first names the bundle: once per loaded function, into at most
sourcemap.DEFAULT_MAX_SEGMENTS segments, on a thread of its own, because the request that
needs it may be running on the event loop (edge.node.inline) and the largest map takes ~0.5 s.
Without a map every line stays as it was; with one too large or corrupt too, and that is said
once, as a platform warning.

The engine's last frame is componentize-js's bindings, which call the bundle's export from a
script in that tool's temporary folder (`/tmp/…/sources/initializer.js:242:15`): a path of the
machine that built the component, different on every build and no file of the author's. A
function with a map section (usable or not) gets it shown as RUNTIME_NAME.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from functools import partial

from edge.sandbox import sourcemap
from edge.sandbox.wasm_decode import (
    COMPONENT_PREAMBLE,
    Undecodable,
    encode_uleb,
    read_name,
    read_uleb,
)

SECTION = "edge:js-source-map"
BUNDLE_NAME = "bundle.js"  # what the build calls the bundle; the engine's stacks name it so
MAX_MAP_BYTES = 4 * 1024 * 1024  # ~0.5 s to decode; a larger section is not kept at all
RUNTIME_SCRIPT = "initializer.js"  # componentize-js's bindings
RUNTIME_NAME = "<edge-js-runtime>"

# `bundle.js:LINE:COLUMN` as a whole file name: `name@bundle.js:1:2`, not `xbundle.js` or
# `/some/dir/bundle.js` (componentize-js's own files).
_POSITION = re.compile(r"(?<![\w./\\-])" + re.escape(BUNDLE_NAME) + r":(\d+):(\d+)")
# An absolute path (so never a mapped source, which is relative) to the bindings script, with
# its position.
_RUNTIME_FRAME = re.compile(
    r"(?<![\w.-])/(?:[^\s@:/]+/)+" + re.escape(RUNTIME_SCRIPT) + r":\d+:\d+"
)


def section_bytes(name: str, payload: bytes) -> bytes:
    """A custom section (id 0) of `name` holding `payload`, to append to a component."""
    encoded = name.encode()
    body = encode_uleb(len(encoded)) + encoded + payload
    return b"\x00" + encode_uleb(len(body)) + body


def find_section(wasm: bytes, name: str = SECTION) -> memoryview | None:
    """The payload of the component's top-level custom section `name`; None when it has none
    or the bytes are not a well-framed component. Walks section headers only (a JS component
    has a few dozen), never decodes a section."""
    if not wasm.startswith(COMPONENT_PREAMBLE):
        return None
    wanted = name.encode()
    pos = len(COMPONENT_PREAMBLE)
    try:
        while pos < len(wasm):
            size, start = read_uleb(wasm, pos + 1)
            end = start + size
            if end > len(wasm):
                return None
            if wasm[pos] == 0:
                found, payload = read_name(wasm, start)
                if found == wanted and payload <= end:
                    return memoryview(wasm)[payload:end]
            pos = end
    except Undecodable:
        return None
    return None


def rewrite(message: str, source_map: sourcemap.SourceMap | None) -> str:
    """Every `bundle.js:LINE:COLUMN` (1-based, as the engine counts) in `message` replaced by
    the original `file:line:column` (positions the map does not cover stay as they are), and
    the bindings' frames by RUNTIME_NAME."""
    if source_map is not None and BUNDLE_NAME in message:
        message = _POSITION.sub(partial(_original, source_map), message)
    if RUNTIME_SCRIPT in message:
        message = _RUNTIME_FRAME.sub(RUNTIME_NAME, message)
    return message


def _original(source_map: sourcemap.SourceMap, match: re.Match[str]) -> str:
    found = source_map.original(int(match[1]) - 1, int(match[2]) - 1)
    if found is None or not found.source:
        return match[0]
    return f"{found.source}:{found.line + 1}:{found.column + 1}"


def _thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="js-source-map", daemon=True).start()


class StackMapper:
    """One loaded function's map: decoded once, on first need, on a thread of its own."""

    def __init__(
        self,
        raw: bytes,
        warn: Callable[[str], None],
        clock: Callable[[], float] = time.perf_counter,
        spawn: Callable[[Callable[[], None]], None] | None = None,  # default: a new thread
    ) -> None:
        self._raw: bytes | None = raw
        self._map: sourcemap.SourceMap | None = None
        self._started = False
        self._done = threading.Event()
        self._warn = warn
        self._clock = clock
        self._spawn = spawn
        self._lock = threading.Lock()
        self.decode_s: float | None = None  # how long the decode took, once it ran

    @classmethod
    def for_component(cls, wasm: bytes, warn: Callable[[str], None]) -> StackMapper | None:
        """The mapper for a component with a map section; None (nothing to map) without one,
        or with one over MAX_MAP_BYTES (said once, through `warn`)."""
        raw = find_section(wasm)
        if raw is None:
            return None
        if len(raw) > MAX_MAP_BYTES:
            warn(f"JavaScript stack positions left unmapped: the source map has {len(raw)} bytes,"
                 f" over the limit of {MAX_MAP_BYTES}")  # fmt: skip
            return None
        return cls(bytes(raw), warn)

    @staticmethod
    def wants_map(message: str) -> bool:
        """Whether `message` has positions a map could change."""
        return BUNDLE_NAME in message

    @property
    def decoded(self) -> bool:
        """Whether the decode has run (successfully or not)."""
        return self._done.is_set()

    def start(self) -> None:
        """Starts the decode, unless it has started already."""
        with self._lock:
            if self._started:
                return
            self._started = True
        (self._spawn or _thread)(self._decode)

    def wait(self, timeout_s: float) -> bool:
        """Starts the decode and waits for it to end; False if it has not in `timeout_s`."""
        self.start()
        return self._done.wait(timeout_s)

    def rewrite(self, message: str) -> str:
        """`message` rewritten (see `rewrite`) with the map if it is decoded by now; never
        raises (a host import calls it, and an exception there would trap the request)."""
        try:
            return rewrite(message, self._map if self._done.is_set() else None)
        except Exception:  # a bug here must cost the mapping, never the request
            return message

    def _decode(self) -> None:
        raw, self._raw = self._raw, None
        started = self._clock()
        try:
            assert raw is not None
            self._map = sourcemap.decode(raw)
        except sourcemap.SourceMapError as e:
            self._warn(f"JavaScript stack positions left unmapped: bad source map: {e}")
        except Exception as e:  # a bug of ours: said, and no thread dies of it
            self._warn(f"JavaScript stack positions left unmapped: {type(e).__name__}: {e}")
        finally:  # whatever happened, nobody waits for it any longer
            self.decode_s = self._clock() - started
            self._done.set()
