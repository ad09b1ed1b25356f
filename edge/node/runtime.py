"""The node's serving state: engine, compile cache, geo, and the live deployment.

A `Deployment` (routes + loaded functions) is immutable and replaced in one assignment, so a
request sees either the old or the new one, never a mix. Functions are compiled before they
join a deployment, so the first request after a switch does not pay compilation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import ComponentRejected, EdgeError
from edge.node.config import FunctionSource, NodeConfig
from edge.node.geo import GeoLookup
from edge.node.routing import Route, RoutingTable
from edge.sandbox.compile_cache import CompileCache
from edge.sandbox.engine import SandboxEngine
from edge.sandbox.function import LoadedFunction
from edge.sandbox.host import LogSink


@dataclass(frozen=True)
class Unavailable:
    """A function that could not be loaded or built; requests to it get `error`."""

    error: EdgeError


@dataclass(frozen=True)
class Deployment:
    routes: RoutingTable = field(default_factory=lambda: RoutingTable([]))
    functions: dict[str, LoadedFunction | Unavailable] = field(default_factory=dict)
    ready: bool = False


class NodeRuntime:
    def __init__(self, config: NodeConfig, sink: LogSink) -> None:
        self.config = config
        self.sink = sink
        self.engine = SandboxEngine(config.sandbox)
        self.cache = CompileCache(self.engine, config.cache_dir)
        self.geo = GeoLookup(config.geoip_db) if config.geoip_db else None
        self.deployment = Deployment()

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
        self, routes: Iterable[Route], functions: dict[str, LoadedFunction | Unavailable]
    ) -> Deployment:
        deployment = Deployment(RoutingTable(list(routes)), dict(functions), ready=True)
        self.deployment = deployment
        return deployment

    def load_configured(self) -> Deployment:
        loaded = {s.config.name: self.load(s) for s in self.config.functions}
        return self.deploy(self.config.routes, loaded)

    def replace_function(self, name: str, function: LoadedFunction | Unavailable) -> None:
        current = self.deployment
        self.deploy(current.routes.routes, {**current.functions, name: function})

    def close(self) -> None:
        self.engine.close()
        if self.geo is not None:
            self.geo.close()
