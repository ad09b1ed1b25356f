"""Function log lines kept in the control plane's database (table `function_logs`,
migration 8), so `edge logs --since` still answers after a restart.

A line belongs to a function row, so another tenant's lines are unreachable by construction:
a query names the tenant's id and the function's name, as every other tenant query does.
Lines are numbered by `seq` (AUTOINCREMENT: never reused, even once the newest line is pruned),
which a follower passes back to ask for what came after the last line it saw.

Retention, both checked as each batch is stored: at most `max_lines` per function (the oldest
go first) and nothing received more than `max_age_s` ago (queries hide older lines at once;
they are deleted with the next batch). Both deletes walk from the oldest line, so their cost is
what they delete, not what is kept.

This store has its own connection: a burst of log batches queues on this lock and SQLite's
write lock for a few milliseconds per batch, never behind or in front of a deploy's fsync on the
Store's lock. One transaction per batch, without fsync (synchronous=NORMAL): a line survives a
process restart; a power cut may lose the last batches, which a log can afford.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from edge.control.logs import NodeLine, StoredLine

_COLUMNS = (
    "l.seq, l.region, l.node, t.name, f.name, l.version, l.request_id, l.trace_id, l.level, "
    "l.source, l.message, l.time_unix"
)


class LogStore:
    def __init__(
        self,
        db_path: Path,
        *,
        max_lines: int = 100_000,
        max_age_s: float = 24 * 3600.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        if max_lines < 1 or max_age_s <= 0:
            raise ValueError("log retention needs max_lines >= 1 and max_age_s > 0")
        self.max_lines = max_lines
        self.max_age_s = max_age_s
        self.now = now
        self._lock = threading.Lock()
        self._closed = False
        self._db = sqlite3.connect(
            db_path, isolation_level=None, check_same_thread=False, timeout=10
        )
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # function id by "<tenant>/<name>", reread when a batch names one not in it
        self._functions: dict[str, int] = {}
        # lines kept per function id, counted on first use, then kept up to date
        self._counts: dict[int, int] = {}
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'function_logs'")
        self.seq = int((row.fetchone() or (0,))[0])  # of the newest line ever stored

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add(self, node: str, region: str, lines: list[NodeLine]) -> int:
        """Stores the lines of existing functions in one transaction, then applies retention;
        returns how many were kept (the rest name no function of any tenant)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("log store is closed")
            keys = {f"{x.tenant}/{x.function}" for x in lines}
            if not keys <= self._functions.keys():
                self._functions = {
                    f"{r[0]}/{r[1]}": int(r[2]) for r in self._db.execute(
                        "SELECT t.name, f.name, f.id FROM functions f "
                        "JOIN tenants t ON t.id = f.tenant_id")
                }  # fmt: skip
            rows = []
            for x in lines:
                fid = self._functions.get(f"{x.tenant}/{x.function}")
                if fid is not None:
                    rows.append((fid, x, region, node))
            if not rows:
                return 0
            now = self.now()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO function_logs (function_id, received_unix, time_unix, region, "
                    "node, version, request_id, trace_id, level, source, message) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(fid, now, x.time_unix, r, n, x.version, x.request_id, x.trace_id,
                      x.level, x.source, x.message) for fid, x, r, n in rows],
                )  # fmt: skip
                added: dict[int, int] = {}
                for fid, *_ in rows:
                    added[fid] = added.get(fid, 0) + 1
                for fid, n in added.items():
                    self._trim_function(fid, n)
                self._trim_age(now)
                seq = db.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'function_logs'"
                ).fetchone()
            except BaseException:
                db.execute("ROLLBACK")
                self._counts.clear()  # the trims above may have counted deletes that did not
                raise
            db.execute("COMMIT")
            if seq is not None:
                self.seq = int(seq[0])
            return len(rows)

    def _trim_function(self, fid: int, added: int) -> None:
        count = self._counts.get(fid)
        if count is None:
            count = int(self._db.execute(
                "SELECT COUNT(*) FROM function_logs WHERE function_id = ?", (fid,)
            ).fetchone()[0])  # fmt: skip
        else:
            count += added
        excess = count - self.max_lines
        if excess > 0:
            self._db.execute(
                "DELETE FROM function_logs WHERE seq IN (SELECT seq FROM function_logs "
                "WHERE function_id = ? ORDER BY seq LIMIT ?)",
                (fid, excess),
            )
            count = self.max_lines
        self._counts[fid] = count

    def _trim_age(self, now: float) -> None:
        # Lines are received in seq order, so the old ones are a prefix: find where it ends.
        row = self._db.execute(
            "SELECT seq FROM function_logs WHERE received_unix >= ? ORDER BY seq LIMIT 1",
            (now - self.max_age_s,),
        ).fetchone()
        bound = int(row[0]) if row is not None else self.seq + 1
        gone = self._db.execute(
            "SELECT function_id, COUNT(*) FROM function_logs WHERE seq < ? GROUP BY function_id",
            (bound,),
        ).fetchall()
        if not gone:
            return
        self._db.execute("DELETE FROM function_logs WHERE seq < ?", (bound,))
        for fid, n in gone:
            if fid in self._counts:
                self._counts[fid] -= int(n)

    def query(
        self,
        tenant_id: int,
        function: str,
        *,
        after_seq: int = 0,
        since_unix: float | None = None,
        region: str | None = None,
        limit: int = 1000,
    ) -> list[StoredLine]:
        """The newest `limit` lines of the tenant's `function` matching the filters, oldest
        first; lines past the age limit are never returned."""
        if limit <= 0:
            return []
        sql = (
            f"SELECT {_COLUMNS} FROM function_logs l JOIN functions f ON f.id = l.function_id "
            "JOIN tenants t ON t.id = f.tenant_id "
            "WHERE f.tenant_id = ? AND f.name = ? AND l.seq > ? AND l.received_unix >= ?"
        )
        args: list[object] = [tenant_id, function, after_seq, self.now() - self.max_age_s]
        if since_unix is not None:
            sql += " AND l.time_unix >= ?"
            args.append(since_unix)
        if region is not None:
            sql += " AND l.region = ?"
            args.append(region)
        sql += " ORDER BY l.seq DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            if self._closed:
                raise RuntimeError("log store is closed")
            rows = self._db.execute(sql, args).fetchall()
        return [
            StoredLine(int(r[0]), r[1], r[2],
                       NodeLine(r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], float(r[11])))
            for r in reversed(rows)
        ]  # fmt: skip
