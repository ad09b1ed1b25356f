"""`edge dns --config traffic.toml`: the authoritative geo-DNS server as one process.

Wires the pieces once, in one direction: traffic.toml -> GeoDB -> Steerer and TrafficState ->
Authority -> DnsServer (UDP on a thread, TCP on the event loop), with the HealthChecker and the
drain follower feeding the same TrafficState on the event loop. `dns.workers` > 1 adds UDP
worker processes on the same port that follow that state (edge/traffic/workers.py).

Signals: SIGHUP re-opens the geo database file (operators replace it on disk when MaxMind
publishes a new one) and keeps the old one if the new file does not load; SIGINT and SIGTERM
stop the server, the workers, the sockets and the health probes, and return.

    python -m edge.traffic.main --config bench/gdnsd/traffic.toml --port 5353
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import ConfigError, EdgeError
from edge.traffic.dns import Authority
from edge.traffic.drain_follower import follow_drains
from edge.traffic.geodb import GeoDB
from edge.traffic.health_checker import HealthChecker
from edge.traffic.regions import load_traffic_config
from edge.traffic.server import DnsServer
from edge.traffic.state import TrafficState
from edge.traffic.steering import Steerer
from edge.traffic.workers import WorkerPool, default_workers

# Loopback unless told otherwise: a server started by hand for a try-out must not answer the
# network. Production passes --host with the service address (or 0.0.0.0).
DEFAULT_HOST = "127.0.0.1"


def _say(message: str) -> None:
    print(f"edge dns: {message}", file=sys.stderr, flush=True)


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


def reload_geodb(geo: GeoDB) -> bool:
    """Re-open the geo database file; on a bad file keep serving from the loaded one."""
    try:
        geo.reload()
    except ConfigError as e:
        _say(f"geoip reload failed, still serving the previous database: {e.message}")
        return False
    _say(f"geoip database reloaded from {geo.path}")
    return True


def _reloaded(geo: GeoDB, steerer: Steerer, state: TrafficState, pool: WorkerPool) -> None:
    if reload_geodb(geo):
        steerer.forget()  # cached answers came from the old database
        state.invalidate()
        pool.reload_geodb()


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run_dns(
    config_path: Path,
    *,
    listen_host: str | None = None,
    port: int | None = None,
    geoip_db: Path | None = None,
    control: tuple[str, str] | None = None,
    workers: int | None = None,
) -> None:
    """`control`: (URL, token) of a control plane whose region drains to follow. `workers`:
    UDP workers in all, this process included (default `dns.workers`; 0 there: one per CPU).

    Serve until SIGINT/SIGTERM (or until cancelled). `port` 0 binds a free port; the ready
    line on stderr names the one bound, which is how scripts and tests find it."""
    config = load_traffic_config(config_path)
    host = listen_host or DEFAULT_HOST
    with open_geodb(geoip_db) as geo:
        state = TrafficState(config)
        steerer = Steerer(config.regions, config.steering, geo)
        authority = Authority(config, steerer, state)
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
        pool = WorkerPool(config, geo, state, host, bound)
        checker = HealthChecker(state)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        handlers = {
            signal.SIGINT: stop.set,
            signal.SIGTERM: stop.set,
            # The reload runs on the loop between queries, so no query sees a half-swapped DB;
            # opening an .mmdb is an mmap plus a few probe lookups, short enough to do inline.
            signal.SIGHUP: lambda: _reloaded(geo, steerer, state, pool),
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
            threads = config.dns.udp_threads
            _say(
                f"answering UDP with {count} worker{'s' if count > 1 else ''} "
                f"of {threads} thread{'s' if threads > 1 else ''}"
            )
            _say(f"authoritative for {config.dns.zone} on {_endpoint(host, bound)} (udp+tcp)")
            await stop.wait()
            _say("stopping")
        finally:
            if follower is not None:
                follower.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            await checker.aclose()
            await pool.aclose()
            await server.close()


def dns(
    config: Annotated[Path, typer.Option("--config", help="traffic.toml")],
    port: Annotated[int | None, typer.Option(help="UDP+TCP port (default: dns.port)")] = None,
    host: Annotated[str | None, typer.Option(help="listen address (default 127.0.0.1)")] = None,
    geoip_db: Annotated[
        Path | None, typer.Option(help="a MaxMind .mmdb (default: GeoLite2-City from PyPI)")
    ] = None,
    control: Annotated[
        str | None, typer.Option(envvar="EDGE_CONTROL_URL", help="follow its region drains")
    ] = None,
    token: Annotated[str | None, typer.Option(envvar="EDGE_TOKEN", help="a read token")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=0, max=256, help="UDP workers (default: dns.workers; 0: one per CPU)"),
    ] = None,
) -> None:
    """Serve the traffic.toml zone as an authoritative geo-DNS server (UDP and TCP).

    SIGHUP re-reads the geoip database; SIGINT/SIGTERM stop."""
    # Health transitions are the operator's main signal; httpx's per-request lines are noise.
    traffic_log = logging.getLogger("edge.traffic")
    if not traffic_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("edge dns: %(message)s"))
        traffic_log.addHandler(handler)
        traffic_log.setLevel(logging.INFO)
    try:
        follow = (control, token) if control and token else None
        asyncio.run(
            run_dns(
                config,
                listen_host=host,
                port=port,
                geoip_db=geoip_db,
                control=follow,
                workers=workers,
            )
        )
    except EdgeError as e:
        print(f"error: {e.message}", file=sys.stderr)
        raise typer.Exit(1) from None
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # a Ctrl-C before the handlers are in place
        pass


if __name__ == "__main__":
    typer.run(dns)
