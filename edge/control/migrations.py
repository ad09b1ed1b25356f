"""Numbered schema migrations, applied in order at open, each in its own transaction.

Never edit a migration that has shipped; add the next number instead.
"""

from __future__ import annotations

MIGRATIONS: dict[int, list[str]] = {
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
}
