"""`node.toml`: who the node is, where it listens, and which functions it serves on which routes.

[node]
id = "node-1"
region = "local"
listen = "127.0.0.1:8787"
url = "http://10.0.0.5:8787"       # where other nodes reach this one (L7 spill); default
                                   # http://<listen>, none when listening on a wildcard
dns_ipv4 = "203.0.113.5"           # what the geo-DNS server answers for this node (A, AAAA);
dns_ipv6 = "2001:db8::5"           # default: the url's host when it is an IP literal
cache_dir = ".edge-cache"          # compiled components; relative to this file
geoip_db = "GeoLite2-City.mmdb"    # optional
trusted_proxies = ["127.0.0.1/32"] # whose x-forwarded-for is believed
workers = 16                       # threads running wasm (and as many native ones for C)
awake_workers = 0                  # native ones running at once before a request waits for
                                   # one (1 ms at most); 0: one per core besides the loop's
function_workers = 0               # workers one function may hold at once, so a flood of one
                                   # function leaves the rest (and the CPU) to others; 0: twice
                                   # the cores, at most three quarters of the workers
queue_length = 256                 # requests of one function waiting for a worker; beyond, or
queue_timeout_ms = 5000            # after waiting this long: 503 overloaded, Retry-After: 1
worker_nice = 0                    # added to the workers' nice value, so HTTP and health checks
                                   # go first when functions keep every core busy (but compiles
                                   # too: see EngineSettings.worker_nice); 0: as the loop

[sandbox]
pooling = true
epoch_tick_ms = 2
ticker = "native"                  # the epoch ticker: a native thread (falls back to "python",
                                   # a Python thread, when zig cannot build it; see readyz)
invoke = "native"                  # a C function's fresh request in one call of a native
                                   # helper (falls back to "python" likewise; see readyz)
prepare_instances = true           # keep one fresh instance ready for functions whose
prepare_above_us = 200             # instantiation takes longer than this (Python)
compiler = "cranelift"             # or "winch": compiles 5x faster, slower code (edge dev)
tier_up = true                     # components over tier_up_above_bytes not in the compile
tier_up_above_bytes = 1048576      # cache serve Winch code at once, then Cranelift's once it
                                   # is compiled in the background (Python: ~3 s sooner live)
warm_up_threads = 2                # a loaded Python/JS function's pool slots warmed, so first
                                   # requests are not slower (~25 MiB each resident); 0: off

[tracing]                          # off unless an endpoint is set here or in
otlp_endpoint = "http://127.0.0.1:4318"  # OTEL_EXPORTER_OTLP_ENDPOINT; /v1/traces is added
service_name = "edge-node"

[logs]                             # function logs shipped to the control plane (when following)
ship_interval_ms = 200
buffer_lines = 10000               # held while the control plane is slow; beyond, counted drops

[control]                          # follow a control plane instead of [[function]]/[[route]]
url = "http://127.0.0.1:7000"
token = "..."                      # a node token (or token_file)
public_key = "hex"                 # the control plane's Ed25519 key: the node's trust root
state_dir = "state"                # last applied snapshot and blobs, for restarts
secrets_key_file = "secrets.key"   # the fleet's secrets key (the control plane's DATA/secrets.key):
                                   # opens secret config values; without it, functions that have
                                   # one answer 503 secret_unavailable
previous_secrets_key_file = "old.key"  # optional, while the key is rotated; may be absent.
                                   # Both files are read again when they change (a stat at
                                   # every heartbeat and apply, and on SIGHUP): no restart

[[function]]
project = "sdk/examples/c/hello"   # reads edge.toml and build/<name>.wasm
# or: component = "hello.wasm" and manifest = "edge.toml"

[[route]]
route = "*/"                       # HOST/PATH-PREFIX, "*" for any host
function = "hello"
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config.function import FunctionConfig, load_function_config, parse_function_config
from edge.config.listen import check_listen
from edge.config.toml_fields import Table, load_toml
from edge.errors import ConfigError
from edge.node.client_ip import Network, parse_networks
from edge.node.routing import Route
from edge.sandbox.engine import (
    MIB,
    EngineSettings,
    check_compiler,
    check_invoke,
    check_ticker,
)
from edge.sandbox.ticker import NATIVE

MAX_WARM_UP_THREADS = 64  # each may hold a slot resident per function (see EngineSettings)


@dataclass(frozen=True)
class FunctionSource:
    config: FunctionConfig
    component_path: Path


@dataclass(frozen=True)
class ControlConfig:
    url: str
    token: str
    public_key: bytes
    state_dir: Path
    secrets_key_file: Path | None = None
    previous_secrets_key_file: Path | None = None


@dataclass(frozen=True)
class TracingConfig:
    otlp_endpoint: str = ""  # "" exports nothing, and no span is recorded
    service_name: str = "edge-node"


@dataclass(frozen=True)
class LogShipConfig:
    ship_interval_ms: int = 200
    buffer_lines: int = 10_000


@dataclass(frozen=True)
class NodeConfig:
    node_id: str = field(default_factory=socket.gethostname)
    region: str = "local"
    listen: str = "127.0.0.1:8787"
    url: str = ""  # advertised to other nodes; "" derives it from `listen`
    dns_ipv4: str = ""  # "" derives it from the advertised URL when its host is an IPv4
    dns_ipv6: str = ""
    cache_dir: Path | None = None
    geoip_db: Path | None = None
    trusted_proxies: tuple[Network, ...] = ()
    workers: int = 16
    function_workers: int = 0  # 0: fairshare.default_per_function's
    queue_length: int = 256
    queue_timeout_ms: int = 5000
    sandbox: EngineSettings = field(default_factory=EngineSettings)
    functions: tuple[FunctionSource, ...] = ()
    routes: tuple[Route, ...] = ()
    control: ControlConfig | None = None
    tracing: TracingConfig = field(default_factory=TracingConfig)
    logs: LogShipConfig = field(default_factory=LogShipConfig)

    @property
    def advertised_url(self) -> str:
        """Where other nodes reach this one; "" (never a spill target) when only a wildcard
        listen address is known."""
        if self.url:
            return self.url
        host, _, port = self.listen.rpartition(":")
        if host in ("0.0.0.0", "[::]", "::", ""):
            return ""
        return f"http://{host}:{port}"

    @property
    def dns_addresses(self) -> tuple[str, str]:
        """(IPv4, IPv6) the geo-DNS server hands out for this node ("": none of that family):
        the configured ones, else the advertised URL's host when it is an IP literal."""
        v4, v6 = self.dns_ipv4, self.dns_ipv6
        if not v4 and not v6:
            host = urllib.parse.urlsplit(self.advertised_url).hostname or ""
            with contextlib.suppress(ValueError):
                addr = ipaddress.ip_address(host)
                v4, v6 = (str(addr), "") if addr.version == 4 else ("", str(addr))
        return v4, v6


def http_url(table: Table, key: str) -> str:
    """`key`'s http(s) URL without a trailing slash, or "" when absent."""
    given = table.get(key, str, "")
    url = given.rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
        scheme, host = parts.scheme, parts.hostname
    except ValueError:  # "http://[nope"
        scheme, host = "", None
    if url and (scheme not in ("http", "https") or not host
                or not url.isprintable() or " " in url):
        raise ConfigError(f"{table.where(key)} must be an http:// or https:// URL, got {given!r}")
    return url


def parse_control(table: Table, base: Path) -> ControlConfig | None:
    if not table.data:
        return None
    table.reject_unknown({"url", "token", "token_file", "public_key", "state_dir",
                          "secrets_key_file", "previous_secrets_key_file"})
    token = table.get("token", str, "")
    if not token and table.get("token_file", str, ""):
        try:
            token = (base / table.get("token_file", str, "")).read_text().strip()
        except OSError as e:
            raise ConfigError(f"{table.where('token_file')}: {e.filename}: {e.strerror}") \
                from None
    if not token:
        raise ConfigError(f"{table.where('token')} (or token_file) is required")
    key_hex = table.require("public_key", str)
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{table.where('public_key')} must be 64 hex digits (Ed25519)")
    table.require("url", str)
    return ControlConfig(
        url=http_url(table, "url"),
        token=token,
        public_key=key,
        state_dir=base / table.get("state_dir", str, "state"),
        secrets_key_file=_optional_path(table, "secrets_key_file", base),
        previous_secrets_key_file=_optional_path(table, "previous_secrets_key_file", base),
    )


def _optional_path(table: Table, key: str, base: Path) -> Path | None:
    value = table.get(key, str, "")
    return base / value if value else None


def parse_tracing(table: Table) -> TracingConfig:
    table.reject_unknown({"otlp_endpoint", "service_name"})
    endpoint = http_url(table, "otlp_endpoint")
    return TracingConfig(endpoint, table.get("service_name", str, "edge-node") or "edge-node")


def parse_logs(table: Table) -> LogShipConfig:
    table.reject_unknown({"ship_interval_ms", "buffer_lines"})
    return LogShipConfig(
        ship_interval_ms=table.positive_int("ship_interval_ms", 200, 60_000),
        buffer_lines=table.positive_int("buffer_lines", 10_000, 1_000_000),
    )


def function_from_project(project: Path) -> FunctionSource:
    config = load_function_config(project)
    return FunctionSource(config, project / "build" / f"{config.name}.wasm")


def parse_node_config(data: dict[str, Any], source: str, base: Path) -> NodeConfig:
    root = Table(data, source)
    root.reject_unknown(
        {"node", "sandbox", "function", "route", "control", "tracing", "logs"}
    )
    node = root.table("node")
    node.reject_unknown(
        {"id", "region", "listen", "url", "dns_ipv4", "dns_ipv6", "cache_dir", "geoip_db",
         "trusted_proxies", "workers", "awake_workers", "function_workers", "queue_length",
         "queue_timeout_ms", "worker_nice"}
    )
    url = http_url(node, "url")
    workers = node.positive_int("workers", 16, 1024)
    # 0: one per core besides the event loop's (edge.sandbox.engine.awake_workers).
    awake = node.get("awake_workers", int, 0)
    if not 0 <= awake <= workers:
        raise ConfigError(
            f"{node.where('awake_workers')} must be between 0 (one per spare core) and "
            f"node.workers ({workers}), got {awake}"
        )
    function_workers = node.get("function_workers", int, 0)
    if not 0 <= function_workers <= workers:
        raise ConfigError(
            f"{node.where('function_workers')} must be between 0 (twice the cores) and "
            f"node.workers ({workers}), got {function_workers}"
        )
    worker_nice = node.get("worker_nice", int, 0)
    if not 0 <= worker_nice <= 19:
        raise ConfigError(
            f"{node.where('worker_nice')} must be between 0 and 19, got {worker_nice}"
        )
    sb = root.table("sandbox")
    warm_up_threads = sb.get("warm_up_threads", int, 2)
    if not 0 <= warm_up_threads <= MAX_WARM_UP_THREADS:
        raise ConfigError(
            f"{sb.where('warm_up_threads')} must be between 0 (off) and {MAX_WARM_UP_THREADS},"
            f" got {warm_up_threads}"
        )
    sb.reject_unknown(
        {"pooling", "epoch_tick_ms", "ticker", "invoke", "prepare_instances", "prepare_above_us",
         "compiler", "tier_up", "tier_up_above_bytes", "warm_up_threads"}
    )  # fmt: skip
    compiler = sb.get("compiler", str, "cranelift")
    check_compiler(compiler, sb.where("compiler"), ConfigError)
    ticker = sb.get("ticker", str, NATIVE)
    check_ticker(ticker, sb.where("ticker"), ConfigError)
    invoke = sb.get("invoke", str, NATIVE)
    check_invoke(invoke, sb.where("invoke"), ConfigError)
    proxies = node.get("trusted_proxies", list, [])
    try:
        trusted = parse_networks([str(p) for p in proxies])
    except ValueError as e:
        raise ConfigError(f"{node.where('trusted_proxies')}: {e}") from None

    def path(key: str) -> Path | None:
        value = node.get(key, str, "")
        return (base / value) if value else None

    functions = []
    for fn in root.tables("function"):
        fn.reject_unknown({"project", "component", "manifest"})
        if "project" in fn.data:
            functions.append(function_from_project(base / fn.require("project", str)))
            continue
        component = base / fn.require("component", str)
        manifest = fn.get("manifest", str, "")
        if manifest:
            config = load_function_config((base / manifest).parent)
        else:
            config = parse_function_config({"function": {"name": component.stem}}, source)
        functions.append(FunctionSource(config, component))
    names = [f.config.name for f in functions]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{source}: function {dupes[0]!r} is defined twice")

    routes = []
    for r in root.tables("route"):
        r.reject_unknown({"route", "function"})
        route = Route.parse(r.require("route", str), r.require("function", str))
        if route.function not in names:
            raise ConfigError(
                f"{r.where('function')}: no [[function]] named {route.function!r} "
                f"(defined: {', '.join(names) or 'none'})"
            )
        routes.append(route)

    return NodeConfig(
        node_id=node.get("id", str, socket.gethostname()),
        region=node.get("region", str, "local"),
        listen=check_listen(node.get("listen", str, "127.0.0.1:8787"), node.where("listen"),
                            optional=False),
        url=url,
        dns_ipv4=_address(node, "dns_ipv4", 4),
        dns_ipv6=_address(node, "dns_ipv6", 6),
        cache_dir=path("cache_dir"),
        geoip_db=path("geoip_db"),
        trusted_proxies=trusted,
        workers=workers,
        function_workers=function_workers,
        queue_length=node.positive_int("queue_length", 256, 1_000_000),
        queue_timeout_ms=node.positive_int("queue_timeout_ms", 5000, 3_600_000),
        sandbox=EngineSettings(
            workers=workers,
            awake_workers=awake,
            worker_nice=worker_nice,
            pooling=sb.get("pooling", bool, True),
            epoch_tick_ms=sb.positive_int("epoch_tick_ms", 2, 1000),
            ticker=ticker,
            invoke=invoke,
            prepare_instances=sb.get("prepare_instances", bool, True),
            prepare_above_us=sb.positive_int("prepare_above_us", 200, 10_000_000),
            compiler=compiler,
            tier_up=sb.get("tier_up", bool, True),
            tier_up_above_bytes=sb.positive_int("tier_up_above_bytes", MIB, 1 << 40),
            warm_up_threads=warm_up_threads,
        ),
        functions=tuple(functions),
        routes=tuple(routes),
        control=parse_control(root.table("control"), base),
        tracing=parse_tracing(root.table("tracing")),
        logs=parse_logs(root.table("logs")),
    )


def _address(table: Table, key: str, version: int) -> str:
    value = table.get(key, str, "")
    return str(table.ip_address(key, value, version)) if value else ""


def load_node_config(path: Path) -> NodeConfig:
    return parse_node_config(load_toml(path), str(path), path.parent)
