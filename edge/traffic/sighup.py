"""SIGHUP for `edge dns`: re-open the geo database, then re-read traffic.toml.

Runs on the event loop, between the loop's other work (health results, control-plane polls),
so only the UDP threads run beside it; `reload.install` orders its writes for them. Either
file, when it does not load, leaves what it would have replaced serving and says why; the
workers get what loaded before the parent serves it (edge/traffic/workers.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.cli_output import Output
from edge.errors import ConfigError
from edge.traffic.dns import Authority
from edge.traffic.geodb import GeoDB
from edge.traffic.health_checker import HealthChecker
from edge.traffic.metrics import ReloadStats
from edge.traffic.regions import load_traffic_config
from edge.traffic.reload import install, plan_reload
from edge.traffic.server import DnsServer
from edge.traffic.state import TrafficState
from edge.traffic.workers import WorkerPool


def reload_geodb(geo: GeoDB, out: Output | None = None) -> bool:
    """Re-open the geo database file; on a bad file keep serving from the loaded one."""
    say = out or Output()
    try:
        geo.reload()
    except ConfigError as e:
        say.event("geoip_reload_failed",
                  f"edge dns: geoip reload failed, still serving the previous database: "
                  f"{e.message}", path=str(geo.path), message=e.message)
        return False
    say.event("geoip_reloaded", f"edge dns: geoip database reloaded from {geo.path}",
              path=str(geo.path))
    return True


@dataclass
class Reloader:
    """What a SIGHUP reaches in a running server."""

    config_path: Path
    following_control: bool
    geo: GeoDB
    state: TrafficState
    authority: Authority
    server: DnsServer
    checker: HealthChecker
    pool: WorkerPool
    reloads: ReloadStats
    out: Output
    # Restart-only [dns] keys the command line set: the file does not decide them.
    from_command_line: frozenset[str] = frozenset()

    def __call__(self) -> None:
        if reload_geodb(self.geo, self.out):
            self.authority.steerer.forget()  # cached answers came from the old database
            self.state.invalidate()
            self.pool.reload_geodb()
        self.reload_config()

    def reload_config(self) -> bool:
        path = self.config_path
        try:
            plan = plan_reload(
                self.state.config, load_traffic_config(path), self.state.regions,
                source=str(path), following_control=self.following_control,
                from_command_line=self.from_command_line,
            )  # fmt: skip
        except ConfigError as e:
            self.reloads.count("failed")
            self.out.event(
                "config_reload_failed",
                f"edge dns: config reload failed, still serving the previous configuration: "
                f"{e.message}", path=str(path), message=e.message,
            )  # fmt: skip
            return False
        self.pool.reload_config(plan)
        install(plan, self.state, self.authority, self.geo)
        self.checker.reconfigure(plan.config.health)
        self.server.tcp_idle_timeout_s = plan.config.dns.tcp_idle_timeout_s
        self.reloads.count("ok")
        for setting in plan.restart_needed:
            self.out.event(
                "config_restart_needed",
                f"edge dns: {path}: {setting} takes a restart; still serving with the old value",
                path=str(path), setting=setting,
            )  # fmt: skip
        changed = "; ".join(plan.changes) if plan.changes else "no changes"
        self.out.event(
            "config_reloaded", f"edge dns: configuration reloaded from {path} ({changed})",
            path=str(path), changes=list(plan.changes), restart_needed=list(plan.restart_needed),
        )  # fmt: skip
        return True
