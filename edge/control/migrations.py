"""Numbered schema migrations, applied in order at open, each in its own transaction.

Never edit a migration that has shipped; add the next number instead. A step is an SQL
statement, or a function of the connection and the secrets key for what SQL cannot do.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from edge.control.sealing import SecretsKey, to_text

Step = str | Callable[[sqlite3.Connection, SecretsKey], None]
SEALING_MIGRATION = 12


def _seal_secrets(db: sqlite3.Connection, key: SecretsKey) -> None:
    """Seals every secret value kept in plaintext before 12: the current ones and every one a
    "config" revision's state remembers (the store rewrites the file afterwards, see
    Store.scrub, so the plaintext is not left in free pages)."""
    names = {
        int(r[0]): f"{r[1]}/{r[2]}" for r in db.execute(
            "SELECT f.id, t.name, f.name FROM functions f JOIN tenants t ON t.id = f.tenant_id")
    }  # fmt: skip
    rows = db.execute(
        "SELECT function_id, key, value FROM function_config WHERE secret = 1").fetchall()
    db.executemany(
        "UPDATE function_config SET value = ? WHERE function_id = ? AND key = ?",
        [(to_text(key.seal(r[2], names[r[0]], r[1])), r[0], r[1]) for r in rows],
    )
    for number, fid, state_json in db.execute(
        "SELECT number, function_id, state FROM revisions WHERE kind = 'config'"
    ).fetchall():
        state = json.loads(state_json)
        if not state.get("secret"):
            continue
        for k in state["secret"]:
            state["values"][k] = to_text(key.seal(state["values"][k], names[fid], k))
        db.execute("UPDATE revisions SET state = ? WHERE number = ?",
                   (json.dumps(state, sort_keys=True, separators=(",", ":")), number))


MIGRATIONS: dict[int, list[Step]] = {
    1: [
        """CREATE TABLE tenants (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_unix REAL NOT NULL
        )""",
        # Only a sha256 of each token is kept: a copy of the database does not grant access.
        # Node tokens belong to no tenant; api tokens to exactly one.
        """CREATE TABLE tokens (
            id INTEGER PRIMARY KEY,
            token_sha256 TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL CHECK (kind IN ('api', 'node')),
            tenant_id INTEGER REFERENCES tenants(id),
            scopes TEXT NOT NULL,
            label TEXT NOT NULL,
            created_unix REAL NOT NULL,
            CHECK ((kind = 'node') = (tenant_id IS NULL))
        )""",
        """CREATE TABLE functions (
            id INTEGER PRIMARY KEY,
            tenant_id INTEGER NOT NULL REFERENCES tenants(id),
            name TEXT NOT NULL,
            created_unix REAL NOT NULL,
            UNIQUE (tenant_id, name)
        )""",
        """CREATE TABLE versions (
            function_id INTEGER NOT NULL REFERENCES functions(id),
            number INTEGER NOT NULL CHECK (number >= 1),
            sha256 TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            manifest TEXT NOT NULL,
            message TEXT NOT NULL,
            author TEXT NOT NULL,
            created_unix REAL NOT NULL,
            PRIMARY KEY (function_id, number)
        )""",
        # Versions are immutable and kept: the database itself refuses to change them.
        """CREATE TRIGGER versions_no_update BEFORE UPDATE ON versions
           BEGIN SELECT RAISE(ABORT, 'versions are immutable'); END""",
        """CREATE TRIGGER versions_no_delete BEFORE DELETE ON versions
           BEGIN SELECT RAISE(ABORT, 'versions are never deleted'); END""",
        # A host belongs to one tenant (checked in code); a host + path to one function.
        """CREATE TABLE routes (
            host TEXT NOT NULL,
            path TEXT NOT NULL,
            tenant_id INTEGER NOT NULL REFERENCES tenants(id),
            function_id INTEGER NOT NULL REFERENCES functions(id),
            PRIMARY KEY (host, path)
        )""",
        """CREATE TABLE deployments (
            function_id INTEGER PRIMARY KEY REFERENCES functions(id),
            stable_version INTEGER NOT NULL,
            canary_version INTEGER,
            canary_percent INTEGER NOT NULL DEFAULT 0
                CHECK (canary_percent BETWEEN 0 AND 100),
            sticky TEXT NOT NULL DEFAULT 'ip',
            FOREIGN KEY (function_id, stable_version) REFERENCES versions(function_id, number),
            FOREIGN KEY (function_id, canary_version) REFERENCES versions(function_id, number)
        )""",
        # One row per change, numbered for the whole system. `state` is the function's full
        # deployment after the change, so the configuration at any revision can be rebuilt.
        """CREATE TABLE revisions (
            number INTEGER PRIMARY KEY,
            created_unix REAL NOT NULL,
            function_id INTEGER REFERENCES functions(id),
            kind TEXT NOT NULL
                CHECK (kind IN ('deploy', 'canary', 'promote', 'rollback', 'routes')),
            author TEXT NOT NULL,
            state TEXT NOT NULL,
            change TEXT NOT NULL
        )""",
        "CREATE INDEX revisions_by_function ON revisions(function_id, number)",
        """CREATE TABLE nodes (
            id TEXT PRIMARY KEY,
            region TEXT NOT NULL,
            applied_revision INTEGER NOT NULL,
            last_report_unix REAL NOT NULL,
            healthy INTEGER NOT NULL,
            convergence_ms REAL
        )""",
    ],
    # A node says why it refused a snapshot (bad signature, blob mismatch), empty when it did not.
    2: ["ALTER TABLE nodes ADD COLUMN last_error TEXT NOT NULL DEFAULT ''"],
    # Operator drains: the newest ramp per region (a region with no row takes all its traffic).
    3: [
        """CREATE TABLE region_drains (
            region TEXT PRIMARY KEY,
            direction TEXT NOT NULL CHECK (direction IN ('drain', 'undrain')),
            started_unix REAL NOT NULL,
            over_s REAL NOT NULL CHECK (over_s >= 0),
            from_share REAL NOT NULL CHECK (from_share BETWEEN 0 AND 1)
        )""",
    ],
    # Where a node can be reached by other nodes (L7 spill while its region drains).
    4: ["ALTER TABLE nodes ADD COLUMN url TEXT NOT NULL DEFAULT ''"],
    5: [
        # Regions become configuration: location, weight and drain ramp, changed only through
        # revisions (so they reach nodes in the snapshot). NULL location or weight: not set
        # here (a region known only from node reports or a drain); readers use their default.
        """CREATE TABLE regions (
            name TEXT PRIMARY KEY,
            latitude REAL CHECK (latitude BETWEEN -90 AND 90),
            longitude REAL CHECK (longitude BETWEEN -180 AND 180),
            weight INTEGER CHECK (weight BETWEEN 0 AND 100),
            drain_direction TEXT CHECK (drain_direction IN ('drain', 'undrain')),
            drain_started_unix REAL,
            drain_over_s REAL CHECK (drain_over_s >= 0),
            drain_from_share REAL CHECK (drain_from_share BETWEEN 0 AND 1),
            CHECK ((latitude IS NULL) = (longitude IS NULL)),
            CHECK ((drain_direction IS NULL) = (drain_started_unix IS NULL)
                   AND (drain_direction IS NULL) = (drain_over_s IS NULL)
                   AND (drain_direction IS NULL) = (drain_from_share IS NULL))
        )""",
        """INSERT INTO regions (name, drain_direction, drain_started_unix, drain_over_s,
                               drain_from_share)
           SELECT region, direction, started_unix, over_s, from_share FROM region_drains""",
        # SQLite cannot alter a CHECK: rebuild `revisions` with the new kinds and a `subject`
        # (the region name or node id of a change that belongs to no function). Nothing
        # references `revisions`, so dropping the old table breaks no foreign key. The whole
        # migration is one transaction (Store.migrate): a crash leaves the old schema intact.
        """CREATE TABLE revisions_v5 (
            number INTEGER PRIMARY KEY,
            created_unix REAL NOT NULL,
            function_id INTEGER REFERENCES functions(id),
            subject TEXT,
            kind TEXT NOT NULL CHECK (kind IN ('deploy', 'canary', 'promote', 'rollback',
                                               'routes', 'region', 'node')),
            author TEXT NOT NULL,
            state TEXT NOT NULL,
            change TEXT NOT NULL,
            CHECK ((kind IN ('region', 'node')) = (function_id IS NULL)),
            CHECK ((kind IN ('region', 'node')) = (subject IS NOT NULL))
        )""",
        """INSERT INTO revisions_v5 (number, created_unix, function_id, subject, kind, author,
                                    state, change)
           SELECT number, created_unix, function_id, NULL, kind, author, state, change
           FROM revisions""",
        "DROP TABLE revisions",
        "ALTER TABLE revisions_v5 RENAME TO revisions",
        "CREATE INDEX revisions_by_function ON revisions(function_id, number)",
        "CREATE INDEX revisions_by_subject ON revisions(kind, subject, number)",
        # Drains made before this migration become region revisions, so snapshots carry them.
        """INSERT INTO revisions (number, created_unix, function_id, subject, kind, author,
                                 state, change)
           SELECT (SELECT COALESCE(MAX(number), 0) FROM revisions)
                      + ROW_NUMBER() OVER (ORDER BY region),
                  started_unix, NULL, region, 'region', 'migration 5',
                  json_object('name', region, 'latitude', NULL, 'longitude', NULL,
                              'weight', NULL,
                              'drain', json_object('direction', direction,
                                                   'started_unix', started_unix,
                                                   'over_s', over_s,
                                                   'from_share', from_share)),
                  '{}'
           FROM region_drains""",
        "DROP TABLE region_drains",
        # Nodes report a request counter; the store keeps the rate between two reports.
        "ALTER TABLE nodes ADD COLUMN requests_total INTEGER",
        "ALTER TABLE nodes ADD COLUMN requests_per_s REAL",
    ],
    6: [
        # Revoked tokens stay listed (who had access, until when) but no longer authenticate.
        "ALTER TABLE tokens ADD COLUMN revoked_unix REAL",
        # The first-start token was always meant as the operator's: it may now manage tenants
        # and tokens (scope "admin"). Scopes are stored sorted, so "admin" goes first.
        """UPDATE tokens SET scopes = 'admin,' || scopes
           WHERE kind = 'api' AND label = 'default-admin' AND scopes NOT LIKE '%admin%'""",
    ],
    # The addresses the geo-DNS server hands out for a node ('': none of that family).
    7: [
        "ALTER TABLE nodes ADD COLUMN ipv4 TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE nodes ADD COLUMN ipv6 TEXT NOT NULL DEFAULT ''",
    ],
    # Function log lines shipped by nodes (edge.control.log_store), kept across restarts.
    # AUTOINCREMENT: a seq is never reused, or a follower's cursor could skip new lines.
    # received_unix is the control plane's clock (node clocks may be off): retention by age.
    8: [
        """CREATE TABLE function_logs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            function_id INTEGER NOT NULL REFERENCES functions(id),
            received_unix REAL NOT NULL,
            time_unix REAL NOT NULL,
            region TEXT NOT NULL,
            node TEXT NOT NULL,
            version TEXT NOT NULL,
            request_id TEXT NOT NULL,
            trace_id TEXT NOT NULL,
            level TEXT NOT NULL,
            source TEXT NOT NULL,
            message TEXT NOT NULL
        )""",
        "CREATE INDEX function_logs_by_function ON function_logs(function_id, seq)",
    ],
    # A token may be made to expire (NULL: never); an expired one stays listed, like a revoked
    # one, and gets 401 "token expired".
    9: ["ALTER TABLE tokens ADD COLUMN expires_unix REAL"],
    # `edge function delete`: a "delete" revision takes a function's deployment and routes out
    # of snapshots (its versions stay). Rebuilt as in 5, since SQLite cannot alter a CHECK.
    10: [
        """CREATE TABLE revisions_v10 (
            number INTEGER PRIMARY KEY,
            created_unix REAL NOT NULL,
            function_id INTEGER REFERENCES functions(id),
            subject TEXT,
            kind TEXT NOT NULL CHECK (kind IN ('deploy', 'canary', 'promote', 'rollback',
                                               'routes', 'delete', 'region', 'node')),
            author TEXT NOT NULL,
            state TEXT NOT NULL,
            change TEXT NOT NULL,
            CHECK ((kind IN ('region', 'node')) = (function_id IS NULL)),
            CHECK ((kind IN ('region', 'node')) = (subject IS NOT NULL))
        )""",
        """INSERT INTO revisions_v10 (number, created_unix, function_id, subject, kind, author,
                                     state, change)
           SELECT number, created_unix, function_id, subject, kind, author, state, change
           FROM revisions""",
        "DROP TABLE revisions",
        "ALTER TABLE revisions_v10 RENAME TO revisions",
        "CREATE INDEX revisions_by_function ON revisions(function_id, number)",
        "CREATE INDEX revisions_by_subject ON revisions(kind, subject, number)",
    ],
    # Deploy-time configuration values (edge.control.values): per function, not per version,
    # each change a "config" revision (state: the function's whole set of values). Rebuilt as
    # in 5 and 10 for the new kind.
    11: [
        """CREATE TABLE function_config (
            function_id INTEGER NOT NULL REFERENCES functions(id),
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            secret INTEGER NOT NULL CHECK (secret IN (0, 1)),
            PRIMARY KEY (function_id, key)
        )""",
        """CREATE TABLE revisions_v11 (
            number INTEGER PRIMARY KEY,
            created_unix REAL NOT NULL,
            function_id INTEGER REFERENCES functions(id),
            subject TEXT,
            kind TEXT NOT NULL CHECK (kind IN ('deploy', 'canary', 'promote', 'rollback',
                                               'routes', 'delete', 'config', 'region',
                                               'node')),
            author TEXT NOT NULL,
            state TEXT NOT NULL,
            change TEXT NOT NULL,
            CHECK ((kind IN ('region', 'node')) = (function_id IS NULL)),
            CHECK ((kind IN ('region', 'node')) = (subject IS NOT NULL))
        )""",
        """INSERT INTO revisions_v11 (number, created_unix, function_id, subject, kind, author,
                                     state, change)
           SELECT number, created_unix, function_id, subject, kind, author, state, change
           FROM revisions""",
        "DROP TABLE revisions",
        "ALTER TABLE revisions_v11 RENAME TO revisions",
        "CREATE INDEX revisions_by_function ON revisions(function_id, number)",
        "CREATE INDEX revisions_by_subject ON revisions(kind, subject, number)",
    ],
    # Secret config values sealed at rest (edge.control.sealing): the table and the revision
    # log keep only their sealed form from now on.
    12: [_seal_secrets],
}
