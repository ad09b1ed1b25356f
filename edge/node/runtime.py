"""The node's serving state: engine, compile cache, geo, and the live deployment.

A `Deployment` (routes + loaded functions) is immutable and replaced in one assignment, so a
request sees either the old or the new one, never a mix. Functions are compiled before they
join a deployment, so the first request after a switch does not pay compilation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge.control import split
from edge.errors import ComponentRejected, EdgeError
from edge.node.config import FunctionSource, NodeConfig
from edge.node.geo import GeoLookup
from edge.node.keyfiles import KeyFiles
from edge.node.metrics import NodeMetrics
from edge.node.routing import Route, RoutingTable
from edge.node.spill import Topology
from edge.node.tracing import SpanExporter
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import SandboxEngine
from edge.sandbox.function import LoadedFunction
from edge.sandbox.host import LogSink


@dataclass(frozen=True)
class Unavailable:
    """A function that could not be loaded or built; requests to it get `error`."""

    error: EdgeError


Loaded = LoadedFunction | Unavailable


@dataclass(frozen=True)
class Served:
    """What a routed function name serves: a stable version and, during a canary, a second
    version for a sticky share of clients (edge.control.split decides who)."""

    stable: Loaded
    canary: Loaded | None = None
    canary_percent: int = 0
    sticky: str = "ip"
    stable_label: str = ""  # e.g. "3" (version number), shown in x-edge-version
    canary_label: str = ""
    # Deploy-time config values (edge.control.values), over each version's edge.toml [config].
    # Not part of a loaded version: changing them alone switches without a compile.
    values: Mapping[str, str] = field(default_factory=dict)
    # config.get's map per version served here, merged once per deployment, not per request.
    _configs: dict[int, Mapping[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        merged = {
            id(f): {**f.config.config, **self.values}
            for f in self.loaded() if self.values and isinstance(f, LoadedFunction)
        }  # fmt: skip
        object.__setattr__(self, "_configs", merged)

    def pick(self, function: str, client_ip: str, cookies: Mapping[str, str]) -> tuple[Loaded, str]:
        if self.canary is None or self.canary_percent <= 0:
            return self.stable, self.stable_label
        key = split.client_key(self.sticky, client_ip, cookies)
        if split.side(self.canary_percent, key, function) == "canary":
            return self.canary, self.canary_label
        return self.stable, self.stable_label

    def config_of(self, function: LoadedFunction) -> Mapping[str, str]:
        """What `config.get` reads in `function` (one of the versions served here)."""
        return self._configs.get(id(function), function.config.config)

    def labels(self) -> list[str]:
        """The version labels it serves (metrics keep series for these only)."""
        return [self.stable_label] + ([self.canary_label] if self.canary is not None else [])

    def loaded(self) -> list[Loaded]:
        return [self.stable] if self.canary is None else [self.stable, self.canary]

    def tiers(self) -> dict[str, str]:
        """Which compiler's code each version label serves now (see sandbox.tiering)."""
        return {
            label: f.tier
            for label, f in zip(self.labels(), self.loaded(), strict=True)
            if isinstance(f, LoadedFunction)
        }


@dataclass(frozen=True)
class Deployment:
    routes: RoutingTable = field(default_factory=lambda: RoutingTable([]))
    functions: dict[str, Served] = field(default_factory=dict)
    ready: bool = False
    revision: int | None = None  # the control plane's revision, when following one
    # Regions and other nodes, for L7 spill while this node's region drains.
    topology: Topology = field(default_factory=Topology)

    def longest_deadline_s(self) -> float:
        """The longest deadline of the versions served (0 with none): how long a request in
        flight may still run its function."""
        return max(
            (f.config.limits.deadline_ms for served in self.functions.values()
             for f in served.loaded() if isinstance(f, LoadedFunction)),
            default=0,
        ) / 1000


class NodeRuntime:
    def __init__(
        self, config: NodeConfig, sink: LogSink, engine: SandboxEngine | None = None
    ) -> None:
        """`engine`: one shared by several runtimes in a process (bench.convergence's inproc
        mode); its owner closes it. By default the runtime makes and closes its own."""
        self.config = config
        self.sink = sink
        self._owns_engine = engine is None
        self.engine = engine or SandboxEngine(config.sandbox)
        self.cache = CompileCache(self.engine, config.cache_dir)
        self.geo = GeoLookup(config.geoip_db) if config.geoip_db else None
        self.deployment = Deployment()
        self.metrics = NodeMetrics(
            config.node_id, config.region, self.cache.stats, lambda: self.deployment.revision,
            tiers=self.engine.tiering.stats, ticker=self.engine.ticker.kind,
            invoke=self.engine.invoke_kind,
        )  # fmt: skip
        self.spans: SpanExporter | None = None  # set when an OTLP endpoint is configured
        self.secrets: KeyFiles | None = None  # set when following a control plane (readyz)
        # Set by the app: refuses the requests waiting for a worker when the server stops.
        self.stop_waiting: Callable[[], None] = lambda: None

    def load(self, source: FunctionSource) -> LoadedFunction | Unavailable:
        try:
            wasm = Path(source.component_path).read_bytes()
        except OSError as e:
            return Unavailable(
                ComponentRejected(f"cannot read component {source.component_path}: {e.strerror}")
            )
        try:
            return LoadedFunction(self.engine, self.cache, wasm, source.config, self.sink)
        except EdgeError as e:
            return Unavailable(e)

    def deploy(
        self,
        routes: Iterable[Route],
        functions: Mapping[str, Served | Loaded],
        revision: int | None = None,
        topology: Topology | None = None,
    ) -> Deployment:
        served = {name: f if isinstance(f, Served) else Served(f) for name, f in functions.items()}
        deployment = Deployment(
            RoutingTable(list(routes)), served, True, revision, topology or Topology()
        )
        self.deployment = deployment  # one assignment: requests see old or new, never a mix
        self.metrics.retain((name, v) for name, f in served.items() for v in f.labels())
        return deployment

    def load_configured(self) -> Deployment:
        loaded = {s.config.name: self.load(s) for s in self.config.functions}
        return self.deploy(self.config.routes, loaded)

    def replace_function(self, name: str, function: Loaded) -> None:
        current = self.deployment
        self.deploy(
            current.routes.routes, {**current.functions, name: Served(function)},
            current.revision, current.topology,
        )  # fmt: skip

    def close(self) -> None:
        if self._owns_engine:
            self.engine.close()
        if self.geo is not None:
            self.geo.close()
