"""The WebAssembly sandbox: one engine, a compile cache, and a fresh instance per request.

- `engine`: the shared wasmtime Engines, their settings, and the ticker that enforces deadlines.
- `ticker`, `native_build`: the epoch ticker (a native thread, C built with zig; Python fallback).
- `compile_cache`: compiled components on disk, keyed by content hash + wasmtime + settings.
- `contract`: what a component may import and must export (the edge:function world).
- `host`: the host side of the imports: log, config, and WASI with everything denied.
- `abi`: fast lowering of the request record and lifting of the response.
- `function`: a loaded function and one invocation of it, with limits and typed errors.
- `code`: the compiled, linked component a function runs, replaced whole by a tier-up.
- `tiering`: Winch code served first for large components, Cranelift code switched in later.
- `prepare`, `worker`: instances made ahead, and the background threads that do such work.
"""
