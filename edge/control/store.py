"""The control plane's state: SQLite (WAL, foreign keys) in one data directory.

Every change is one `BEGIN IMMEDIATE` transaction that also writes exactly one `revisions` row,
so the revision counter is contiguous and a crash either keeps a whole change or none of it.
Component bytes live in `BlobStore` and are made durable before the version row that names them.
Time comes from the injected `now`, so tests can freeze it.

One Store is shared by the server's worker threads; a lock serialises use of the connection
(SQLite would serialise the writes anyway, and reads here are a few milliseconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from edge.control import history
from edge.control.blobs import BlobStore
from edge.control.errors import Conflict, NodeAlive, NotFound, SecretUnavailable
from edge.control.migrations import MIGRATIONS, SEALING_MIGRATION
from edge.control.records import (
    ADMIN_SCOPE,
    TOKEN_SCOPES,
    Change,
    ConfigAt,
    ConfigChange,
    FunctionState,
    FunctionSummary,
    Node,
    NodeEndpoint,
    Principal,
    RegionChange,
    Removal,
    Reseal,
    Resolved,
    RevisionRow,
    Tenant,
    TokenInfo,
    Version,
)
from edge.control.regions import Region, RegionDrain, check_region_fields
from edge.control.sealing import (
    KEY_FILE,
    Keyring,
    SecretsKey,
    from_text,
    sealed_key_id,
    to_text,
)
from edge.control.values import SECRET_SHOWN, ConfigValue, check_count
from edge.errors import BadRequest, ConfigError

DB_NAME = "control.db"
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TOKEN_PREFIX = "edge_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Store:
    def __init__(
        self, data_dir: Path, now: Callable[[], float] = time.time,
        secrets_key: SecretsKey | None = None,
    ) -> None:
        """`secrets_key` seals secret config values (edge.control.sealing); by default the one
        in DATA/secrets.key, made on first use."""
        self.data_dir = data_dir
        self.now = now
        data_dir.mkdir(parents=True, exist_ok=True)
        self.secrets_key = secrets_key or SecretsKey.load_or_create(data_dir / KEY_FILE)
        self.blobs = BlobStore(data_dir / "blobs")
        self._lock = threading.RLock()
        # Tokens that authenticated, by sha256; cleared by every revocation.
        self._principals: dict[str, Principal] = {}
        self._db = sqlite3.connect(
            data_dir / DB_NAME, isolation_level=None, check_same_thread=False, timeout=10
        )
        self._db.row_factory = sqlite3.Row
        self._closed = False
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed deploy survives power loss too, not only a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            # Deleted rows are zeroed, not left in free pages: no old value (a secret sealed
            # before its rotation, say) lingers in the file.
            self._db.execute("PRAGMA secure_delete=ON")
            self.migrate()
        except sqlite3.DatabaseError as e:  # not a database, damaged, locked, read-only
            self._db.close()
            corrupt = not isinstance(e, sqlite3.OperationalError)
            advice = (" (restore it from a backup, or start with an empty --data directory)"
                      if corrupt else "")
            raise ConfigError(
                f"cannot use the control plane's database {data_dir / DB_NAME}: {e}{advice}"
            ) from None

    # --- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RuntimeError("store is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def migrate(self) -> list[int]:
        """Applies the migrations not applied yet; returns their numbers."""
        applied: list[int] = []
        with self._tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_unix REAL NOT NULL)"
            )
        for number in sorted(MIGRATIONS):
            with self._tx() as db:
                done = db.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (number,)
                ).fetchone()
                if done:
                    continue
                for step in MIGRATIONS[number]:
                    if isinstance(step, str):
                        db.execute(step)
                    else:
                        step(db, self.secrets_key)
                db.execute(
                    "INSERT INTO schema_migrations (version, applied_unix) VALUES (?, ?)",
                    (number, self.now()),
                )
                applied.append(number)
        if SEALING_MIGRATION in applied and self._has_config():
            self.scrub()
        return applied

    def _has_config(self) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT 1 FROM revisions WHERE kind = 'config'").fetchone()
        return row is not None

    def scrub(self) -> None:
        """Rewrites the database file without free space and empties the WAL, so no value
        deleted or replaced before secure_delete (plaintext secrets before migration 12) is
        left in either file."""
        with self._lock:
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def schema_versions(self) -> list[int]:
        with self._tx() as db:
            rows = db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        return [int(r[0]) for r in rows]

    # --- tenants and tokens ---------------------------------------------------------------------

    def create_tenant(self, name: str) -> int:
        if not TENANT_RE.match(name):
            raise BadRequest(
                f"bad tenant name {name!r}: 1-63 lowercase letters, digits and -, "
                "starting with a letter or digit"
            )
        with self._tx() as db:
            now = self.now()
            try:
                cur = db.execute(
                    "INSERT INTO tenants (name, created_unix) VALUES (?, ?)", (name, now)
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"tenant {name!r} already exists") from None
            return int(cur.lastrowid or 0)

    def tenant_names(self) -> list[str]:
        with self._tx() as db:
            return [r[0] for r in db.execute("SELECT name FROM tenants ORDER BY name")]

    def tenants(self) -> list[Tenant]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT t.name, t.created_unix, "
                "(SELECT COUNT(*) FROM functions f JOIN deployments d ON d.function_id = f.id "
                " WHERE f.tenant_id = t.id), "
                "(SELECT COUNT(*) FROM tokens k WHERE k.tenant_id = t.id "
                " AND k.revoked_unix IS NULL AND COALESCE(k.expires_unix > ?, 1)), "
                "(SELECT COUNT(*) FROM functions f WHERE f.tenant_id = t.id) "
                "FROM tenants t ORDER BY t.name", (self.now(),),
            ).fetchall()
        return [Tenant(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def create_token(
        self, *, tenant: str | None, kind: str, scopes: Sequence[str] = (), label: str,
        expires_in_s: float | None = None,
    ) -> str:
        """Makes a token and returns it; only its sha256 is stored, so this is the one chance to
        see it. `tenant` is None for node tokens."""
        return self.issue_token(tenant=tenant, kind=kind, scopes=scopes, label=label,
                                expires_in_s=expires_in_s)[1]

    def issue_token(
        self, *, tenant: str | None, kind: str, scopes: Sequence[str] = (), label: str,
        expires_in_s: float | None = None,
    ) -> tuple[TokenInfo, str]:
        """`create_token`, also returning what `tokens()` will list for it."""
        unknown = set(scopes) - set(TOKEN_SCOPES)
        if unknown:
            raise BadRequest(
                f"unknown scope {sorted(unknown)[0]!r}; scopes: {', '.join(TOKEN_SCOPES)}"
            )
        if kind == "api" and (tenant is None or not scopes):
            raise BadRequest("an api token needs a tenant and at least one scope")
        if kind == "node" and (tenant is not None or scopes):
            raise BadRequest("a node token has no tenant and no scopes")
        if kind not in ("api", "node"):
            raise BadRequest(f"token kind must be api or node, got {kind!r}")
        if not 0 < len(label) <= 100:
            raise BadRequest("a token name is 1 to 100 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        ordered = tuple(sorted(set(scopes)))
        with self._tx() as db:
            tenant_id = None if tenant is None else self._tenant_id(db, tenant)
            now = self.now()
            expires_unix = None if expires_in_s is None else now + expires_in_s
            cur = db.execute(
                "INSERT INTO tokens (token_sha256, kind, tenant_id, scopes, label, created_unix, "
                "expires_unix) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (hash_token(token), kind, tenant_id, ",".join(ordered), label, now, expires_unix),
            )
        info = TokenInfo(int(cur.lastrowid or 0), kind, tenant, ordered, label, now, None,
                         expires_unix)
        return info, token

    def tokens(self, tenant: str | None = None) -> list[TokenInfo]:
        """Every token (of `tenant` only, if given), revoked ones included, oldest first."""
        args: tuple[int, ...]
        with self._tx() as db:
            where, args = "", ()
            if tenant is not None:
                where, args = "WHERE t.tenant_id = ?", (self._tenant_id(db, tenant),)
            rows = db.execute(
                "SELECT t.id, t.kind, n.name, t.scopes, t.label, t.created_unix, t.revoked_unix, "
                "t.expires_unix FROM tokens t LEFT JOIN tenants n ON n.id = t.tenant_id "
                f"{where} ORDER BY t.id",
                args,
            ).fetchall()
        return [_token_info(r) for r in rows]

    def revoke_token(self, token_id: int) -> TokenInfo:
        """Revokes at once: the next request with it gets 401. Revoking twice changes nothing.
        The last usable admin token cannot be revoked (Conflict): nothing could make another,
        and the operator would be locked out of tenants and tokens for good."""
        with self._tx() as db:
            revoked = db.execute(
                "UPDATE tokens SET revoked_unix = ? WHERE id = ? AND revoked_unix IS NULL",
                (self.now(), token_id),
            ).rowcount
            row = db.execute(
                "SELECT t.id, t.kind, n.name, t.scopes, t.label, t.created_unix, t.revoked_unix, "
                "t.expires_unix FROM tokens t LEFT JOIN tenants n ON n.id = t.tenant_id "
                "WHERE t.id = ?",
                (token_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no token {token_id}")
            if revoked and ADMIN_SCOPE in row["scopes"].split(","):
                admins = db.execute(
                    "SELECT COUNT(*) FROM tokens WHERE kind = 'api' AND revoked_unix IS NULL "
                    "AND COALESCE(expires_unix > ?, 1) AND ',' || scopes || ',' LIKE ?",
                    (self.now(), f"%,{ADMIN_SCOPE},%"),
                ).fetchone()[0]
                if admins == 0:  # it was the last one (the transaction rolls back)
                    raise Conflict(f"token {token_id} is the last admin token: make another one"
                                   " first (edge token create --tenant NAME --scope admin)")
            # Inside the transaction, so no request can re-fill the cache with the old answer.
            self._principals.clear()
        return _token_info(row)

    def authenticate(self, token: str) -> Principal | None:
        digest = hash_token(token)
        with self._tx() as db:
            row = db.execute(
                "SELECT t.kind, t.tenant_id, n.name, t.scopes, t.label, t.expires_unix "
                "FROM tokens t "
                "LEFT JOIN tenants n ON n.id = t.tenant_id "
                "WHERE t.token_sha256 = ? AND t.revoked_unix IS NULL",
                (digest,),
            ).fetchone()
            if row is None:
                return None
            scopes = frozenset(s for s in row["scopes"].split(",") if s)
            principal = Principal(
                row["kind"], row["tenant_id"], row["name"], scopes, row["label"],
                row["expires_unix"],
            )
            self._principals[digest] = principal
        return principal

    def known_principal(self, token: str) -> Principal | None:
        """A token `authenticate` accepted before and nobody revoked since, from memory (no
        I/O, for the request path); None means "ask `authenticate`", not "unknown"."""
        return self._principals.get(hash_token(token))

    @staticmethod
    def _tenant_id(db: sqlite3.Connection, name: str) -> int:
        row = db.execute("SELECT id FROM tenants WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no tenant {name!r}")
        return int(row[0])

    # --- functions and versions -----------------------------------------------------------------

    def create_version(
        self,
        tenant_id: int,
        name: str,
        *,
        sha256: str,
        size_bytes: int,
        manifest: dict[str, Any],
        message: str,
        author: str,
    ) -> Version:
        """Records a new version of `name` (creating the function on its first version). The
        blob must already be durable in `self.blobs`."""
        if not self.blobs.exists(sha256):
            raise Conflict(f"blob {sha256} is not stored; upload the component first")
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM functions WHERE tenant_id = ? AND name = ?", (tenant_id, name)
            ).fetchone()
            if row is None:
                cur = db.execute(
                    "INSERT INTO functions (tenant_id, name, created_unix) VALUES (?, ?, ?)",
                    (tenant_id, name, self.now()),
                )
                function_id = int(cur.lastrowid or 0)
            else:
                function_id = int(row[0])
            number = int(
                db.execute(
                    "SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE function_id = ?",
                    (function_id,),
                ).fetchone()[0]
            )
            created = self.now()
            db.execute(
                "INSERT INTO versions (function_id, number, sha256, size_bytes, manifest, "
                "message, author, created_unix) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (function_id, number, sha256, size_bytes, _dumps(manifest), message, author,
                 created),
            )
            key = self._function_key(db, function_id)
        return Version(key, number, sha256, size_bytes, manifest, message, author, created)

    def versions(self, tenant_id: int, name: str) -> list[Version]:
        with self._tx() as db:
            function_id = self._function_id(db, tenant_id, name)
            rows = db.execute(
                "SELECT * FROM versions WHERE function_id = ? ORDER BY number", (function_id,)
            ).fetchall()
            key = self._function_key(db, function_id)
        return [self._version(key, r) for r in rows]

    def function_names(self, tenant_id: int) -> list[str]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT name FROM functions WHERE tenant_id = ? ORDER BY name", (tenant_id,)
            )
            return [r[0] for r in rows]

    def functions(self, tenant_id: int) -> list[FunctionSummary]:
        """Every function of the tenant by name, deleted ones included (`deleted` says which),
        read in one transaction so the list is one moment's."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT f.id, f.name, f.created_unix, "
                "(SELECT COUNT(*) FROM versions v WHERE v.function_id = f.id) AS version_count, "
                "(SELECT MAX(created_unix) FROM versions v WHERE v.function_id = f.id) AS v_unix, "
                "(SELECT MAX(created_unix) FROM revisions r WHERE r.function_id = f.id) AS r_unix, "
                # Config values stay through a delete: their changes say nothing of it.
                "(SELECT kind FROM revisions r WHERE r.function_id = f.id AND kind != 'config' "
                " ORDER BY number DESC LIMIT 1) AS last_kind "
                "FROM functions f WHERE f.tenant_id = ? ORDER BY f.name",
                (tenant_id,),
            ).fetchall()
            return [
                FunctionSummary(
                    r["name"], self._state(db, r["id"]), r["version_count"], r["created_unix"],
                    max(t for t in (r["created_unix"], r["v_unix"], r["r_unix"]) if t is not None),
                    r["last_kind"] == "delete",
                )
                for r in rows
            ]

    @staticmethod
    def _version(key: str, r: sqlite3.Row) -> Version:
        return Version(
            key, r["number"], r["sha256"], r["size_bytes"], json.loads(r["manifest"]),
            r["message"], r["author"], r["created_unix"],
        )

    @staticmethod
    def _function_id(db: sqlite3.Connection, tenant_id: int, name: str) -> int:
        # Another tenant's function is "not found", exactly like one that does not exist.
        row = db.execute(
            "SELECT id FROM functions WHERE tenant_id = ? AND name = ?", (tenant_id, name)
        ).fetchone()
        if row is None:
            raise NotFound(f"no function {name!r}")
        return int(row[0])

    @staticmethod
    def _function_key(db: sqlite3.Connection, function_id: int) -> str:
        row = db.execute(
            "SELECT t.name, f.name FROM functions f JOIN tenants t ON t.id = f.tenant_id "
            "WHERE f.id = ?",
            (function_id,),
        ).fetchone()
        return f"{row[0]}/{row[1]}"

    @staticmethod
    def _require_version(db: sqlite3.Connection, function_id: int, number: int) -> None:
        row = db.execute(
            "SELECT 1 FROM versions WHERE function_id = ? AND number = ?", (function_id, number)
        ).fetchone()
        if row is None:
            raise NotFound(f"no version {number}")

    # --- deployments: every change here writes exactly one revision -----------------------------

    def deployment(self, tenant_id: int, name: str) -> FunctionState | None:
        with self._tx() as db:
            return self._state(db, self._function_id(db, tenant_id, name))

    def deploy(
        self,
        tenant_id: int,
        name: str,
        version: int,
        routes: Sequence[tuple[str, str]] | None,
        author: str,
        values: tuple[Mapping[str, str | None], frozenset[str]] | None = None,
    ) -> Change:
        """Makes `version` stable (clearing any canary) and, if given, sets the routes and
        changes config values (as `set_config`). Values and deployment are two revisions of
        one transaction: the snapshot of the second, the one published, has both, so no node
        serves the new version without its values or the old one with them."""
        with self._tx() as db:
            fid = self._function_id(db, tenant_id, name)
            self._require_version(db, fid, version)
            set_values = values is not None and self._set_values(db, fid, *values, author).changed
            old = self._state(db, fid)
            new_routes = old.routes if old and routes is None else tuple(sorted(set(routes or ())))
            if routes is not None:
                self._claim_routes(db, tenant_id, fid, new_routes)
            if old is not None and old.stable == version:
                new = FunctionState(old.function, version, old.canary, old.canary_percent,
                                    old.sticky, new_routes)
                kind = "routes"
            else:
                new = FunctionState(self._function_key(db, fid), version, routes=new_routes,
                                    sticky=old.sticky if old else "ip")
                kind = "deploy"
            change = self._write(db, fid, kind, old, new, author)
            return replace(change, changed=True) if set_values else change

    def set_canary(
        self,
        tenant_id: int,
        name: str,
        version: int | None,
        percent: int,
        sticky: str | None,
        author: str,
    ) -> Change:
        """Sends `percent` of clients to `version`; `version=None` removes the canary."""
        if not 0 <= percent <= 100:
            raise BadRequest(f"percent must be between 0 and 100, got {percent}")
        with self._tx() as db:
            fid = self._function_id(db, tenant_id, name)
            old = self._deployed(db, fid, name)
            if version is not None:
                self._require_version(db, fid, version)
                if version == old.stable:
                    raise Conflict(f"version {version} is already stable")
            new = FunctionState(
                old.function, old.stable, version, percent if version is not None else 0,
                sticky or old.sticky, old.routes,
            )
            return self._write(db, fid, "canary", old, new, author)

    def promote(self, tenant_id: int, name: str, author: str) -> Change:
        """The canary becomes stable for everyone."""
        with self._tx() as db:
            fid = self._function_id(db, tenant_id, name)
            old = self._deployed(db, fid, name)
            if old.canary is None:
                raise Conflict(f"function {name!r} has no canary to promote")
            new = FunctionState(old.function, old.canary, None, 0, old.sticky, old.routes)
            return self._write(db, fid, "promote", old, new, author)

    def rollback(self, tenant_id: int, name: str, to: int | None, author: str) -> Change:
        """Back to version `to`, or to the stable version before the current one (see
        `edge.control.history`). Any canary is dropped: a rollback is a retreat. Without `to`
        during a canary, the retreat is from the canary alone: the stable version stays (as
        when a gradual deployment is rolled back at Cloudflare or Fastly)."""
        with self._tx() as db:
            fid = self._function_id(db, tenant_id, name)
            old = self._deployed(db, fid, name)
            if to is None and old.canary is not None:
                to = old.stable
            if to is None:
                events = [
                    (r["kind"], json.loads(r["state"])["stable"])
                    for r in db.execute(
                        "SELECT kind, state FROM revisions WHERE function_id = ? "
                        "AND kind != 'config' ORDER BY number",
                        (fid,),
                    )
                ]
                to = history.previous_stable(events)
                if to is None:
                    raise Conflict(f"function {name!r} has no earlier stable version")
            self._require_version(db, fid, to)
            if to == old.stable and old.canary is None:
                raise Conflict(f"version {to} is already stable")
            new = FunctionState(old.function, to, None, 0, old.sticky, old.routes)
            return self._write(db, fid, "rollback", old, new, author)

    def delete_function(self, tenant_id: int, name: str, author: str) -> Removal:
        """Takes the function out of service: its deployment (stable and canary) and routes go,
        so the next snapshot has neither and nodes answer its routes 404 no_route. Its versions
        stay (they are immutable, and a later deploy of the same name carries on numbering);
        its rollback history starts again (`edge.control.history`). A function that is not
        deployed changes nothing; one that does not exist is NotFound."""
        with self._tx() as db:
            fid = self._function_id(db, tenant_id, name)
            old = self._state(db, fid)
            if old is None:
                return Removal(self._revision(db), False, None)
            db.execute("DELETE FROM routes WHERE function_id = ?", (fid,))
            db.execute("DELETE FROM deployments WHERE function_id = ?", (fid,))
            before = old.to_json()
            after = {**before, "stable": None, "canary": None, "canary_percent": 0, "routes": []}
            return Removal(self._log(db, fid, "delete", before, after, author), True, old)

    # --- deploy-time configuration values (edge.control.values) --------------------------------

    def config_values(self, tenant_id: int, name: str) -> list[ConfigValue]:
        with self._tx() as db:
            return self._values(db, self._function_id(db, tenant_id, name))

    def stable_config(self, tenant_id: int, name: str) -> tuple[int, dict[str, str]] | None:
        """The stable version's number and edge.toml [config] (what values override), None
        while the function is not deployed."""
        with self._tx() as db:
            row = db.execute(
                "SELECT v.number, v.manifest FROM deployments d JOIN versions v "
                "ON v.function_id = d.function_id AND v.number = d.stable_version "
                "WHERE d.function_id = ?", (self._function_id(db, tenant_id, name),),
            ).fetchone()  # fmt: skip
        if row is None:
            return None
        config = json.loads(row[1]).get("config", {})
        return int(row[0]), {k: v for k, v in config.items() if isinstance(v, str)}

    @staticmethod
    def _values(db: sqlite3.Connection, fid: int) -> list[ConfigValue]:
        rows = db.execute(
            "SELECT key, value, secret FROM function_config WHERE function_id = ? ORDER BY key",
            (fid,),
        ).fetchall()
        return [ConfigValue(r[0], r[1], bool(r[2])) for r in rows]

    def foreign_secrets(self) -> dict[str, int]:
        """How many current secret values are sealed with a key other than this store's, by
        that key's id ("" for a value that is not sealed at all)."""
        with self._tx() as db:
            rows = db.execute("SELECT value FROM function_config WHERE secret = 1").fetchall()
        counts: dict[str, int] = {}
        for (text,) in rows:
            kid = sealed_key_id(from_text(text))
            if kid != self.secrets_key.key_id:
                counts[kid] = counts.get(kid, 0) + 1
        return counts

    def reseal_secrets(self, new: SecretsKey, author: str) -> Reseal:
        """Seals every secret value again under `new` (a rotation), in one transaction: the
        current ones, and the ones each "config" revision remembers, so the old key opens
        nothing kept here any more. Each function with a secret gets a "config" revision, so
        nodes fetch its values sealed under `new`. A current value neither key opens stops it all
        (SecretUnavailable): set it again (or remove it) first. Run it again after a crash:
        values already under `new` are sealed again, no harm done."""
        count = 0

        def again(sealed_text: str, function: str, key: str) -> str:
            nonlocal count
            value = ring.open(from_text(sealed_text), function, key)
            count += 1
            return to_text(new.seal(value, function, key))

        # The lock spans the transaction and the switch to `new`: a config write on another
        # thread (a running control plane's, edge.control.rotation) comes wholly before, and is
        # sealed again here, or wholly after, under `new`; and nothing seals under `new` before
        # the commit.
        with self._lock:
            ring = Keyring([self.secrets_key, new])
            with self._tx() as db:
                rows = db.execute(
                    "SELECT function_id, key, value FROM function_config WHERE secret = 1 "
                    "ORDER BY function_id, key").fetchall()
                names = {fid: self._function_key(db, fid) for fid in {r[0] for r in rows}}
                db.executemany(
                    "UPDATE function_config SET value = ? WHERE function_id = ? AND key = ?",
                    [(again(text, names[fid], key), fid, key) for fid, key, text in rows],
                )
                for number, state_json in db.execute(
                    "SELECT number, state FROM revisions WHERE kind = 'config'"
                ).fetchall():
                    state = json.loads(state_json)
                    for key in state.get("secret", ()):
                        # History no key opens (a value changed in the file) stays as it is: it
                        # holds nothing either key could reveal, and no one can set it again.
                        with contextlib.suppress(SecretUnavailable):
                            state["values"][key] = again(state["values"][key],
                                                         state["function"], key)
                    db.execute("UPDATE revisions SET state = ? WHERE number = ?",
                               (_dumps(state), number))
                revisions = []
                for fid in sorted(names):
                    after = self._values(db, fid)
                    state = {"function": names[fid], "values": {v.key: v.value for v in after},
                             "secret": [v.key for v in after if v.secret]}
                    change = {k: [SECRET_SHOWN, SECRET_SHOWN] for k in state["secret"]}
                    revisions.append(self._log(db, fid, "config", {}, state, author, change))
            self.secrets_key = new
        self.scrub()
        return Reseal(count, tuple(names[f] for f in sorted(names)), tuple(revisions))

    def set_config(
        self, tenant_id: int, name: str, changes: Mapping[str, str | None],
        secret: frozenset[str], author: str,
    ) -> ConfigChange:
        """Sets (a string) or removes (None) values in one "config" revision; keys not named
        keep theirs. A value set without being named in `secret` is not secret (any more).
        The revision's change shows a secret value as "(secret)" only."""
        with self._tx() as db:
            return self._set_values(db, self._function_id(db, tenant_id, name), changes,
                                    secret, author)

    def _set_values(
        self, db: sqlite3.Connection, fid: int, changes: Mapping[str, str | None],
        secret: frozenset[str], author: str,
    ) -> ConfigChange:
        old = {v.key: v for v in self._values(db, fid)}
        new = dict(old)
        function = self._function_key(db, fid)
        for key, value in changes.items():
            if value is None:
                new.pop(key, None)
            elif key in secret:
                # Sealed before it is written anywhere. A fresh nonce makes every set a change,
                # so `changed` never tells whether a guess matched the secret already set.
                sealed = to_text(self.secrets_key.seal(value, function, key))
                new[key] = ConfigValue(key, sealed, True)
            else:
                new[key] = ConfigValue(key, value, False)
        check_count(len(new))
        after = tuple(new[k] for k in sorted(new))
        if new == old:
            return ConfigChange(self._revision(db), False, after)
        db.execute("DELETE FROM function_config WHERE function_id = ?", (fid,))
        db.executemany(
            "INSERT INTO function_config (function_id, key, value, secret) "
            "VALUES (?, ?, ?, ?)", [(fid, v.key, v.value, int(v.secret)) for v in after],
        )  # fmt: skip
        change = {
            k: [old[k].shown() if k in old else None, new[k].shown() if k in new else None]
            for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)
        }
        state = {"function": function,
                 "values": {v.key: v.value for v in after},  # secrets sealed
                 "secret": [v.key for v in after if v.secret]}
        number = self._log(db, fid, "config", {}, state, author, change)
        return ConfigChange(number, True, after)

    def _deployed(self, db: sqlite3.Connection, fid: int, name: str) -> FunctionState:
        state = self._state(db, fid)
        if state is None:
            raise Conflict(f"function {name!r} is not deployed yet")
        return state

    def _state(self, db: sqlite3.Connection, fid: int) -> FunctionState | None:
        row = db.execute("SELECT * FROM deployments WHERE function_id = ?", (fid,)).fetchone()
        if row is None:
            return None
        routes = db.execute(
            "SELECT host, path FROM routes WHERE function_id = ? ORDER BY host, path", (fid,)
        ).fetchall()
        return FunctionState(
            self._function_key(db, fid), row["stable_version"], row["canary_version"],
            row["canary_percent"], row["sticky"], tuple((r[0], r[1]) for r in routes),
        )

    @staticmethod
    def _claim_routes(
        db: sqlite3.Connection, tenant_id: int, fid: int, routes: Sequence[tuple[str, str]]
    ) -> None:
        for host, path in routes:
            other = db.execute(
                "SELECT 1 FROM routes WHERE host = ? AND tenant_id != ?", (host, tenant_id)
            ).fetchone()
            if other is not None:
                raise Conflict(f"host {host!r} belongs to another tenant")
            row = db.execute(
                "SELECT f.name FROM routes r JOIN functions f ON f.id = r.function_id "
                "WHERE r.host = ? AND r.path = ? AND r.function_id != ?",
                (host, path, fid),
            ).fetchone()
            if row is not None:
                raise Conflict(f"route {host}{path} is already routed to function {row[0]!r}")
        db.execute("DELETE FROM routes WHERE function_id = ?", (fid,))
        db.executemany(
            "INSERT INTO routes (host, path, tenant_id, function_id) VALUES (?, ?, ?, ?)",
            [(h, p, tenant_id, fid) for h, p in routes],
        )

    def _write(
        self,
        db: sqlite3.Connection,
        fid: int,
        kind: str,
        old: FunctionState | None,
        new: FunctionState,
        author: str,
    ) -> Change:
        if old == new:
            return Change(self._revision(db), False, new)
        db.execute(
            "INSERT INTO deployments (function_id, stable_version, canary_version, "
            "canary_percent, sticky) VALUES (?, ?, ?, ?, ?) ON CONFLICT (function_id) DO UPDATE "
            "SET stable_version = excluded.stable_version, canary_version = "
            "excluded.canary_version, canary_percent = excluded.canary_percent, "
            "sticky = excluded.sticky",
            (fid, new.stable, new.canary, new.canary_percent, new.sticky),
        )
        number = self._log(db, fid, kind, old.to_json() if old else {}, new.to_json(), author)
        return Change(number, True, new)

    def _log(
        self, db: sqlite3.Connection, fid: int, kind: str, before: dict[str, Any],
        after: dict[str, Any], author: str, change: dict[str, Any] | None = None,
    ) -> int:
        """Writes a function's revision row (its whole state after, and what changed: by
        default, every key of the state whose value differs)."""
        if change is None:
            change = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}
        number = self._revision(db) + 1
        db.execute(
            "INSERT INTO revisions (number, created_unix, function_id, kind, author, state, "
            "change) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (number, self.now(), fid, kind, author, _dumps(after), _dumps(change)),
        )
        return number

    # --- revisions and snapshots ----------------------------------------------------------------

    @staticmethod
    def _revision(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COALESCE(MAX(number), 0) FROM revisions").fetchone()[0])

    def revision(self) -> int:
        with self._tx() as db:
            return self._revision(db)

    def revision_created(self, revision: int) -> float | None:
        """When `revision` was made (this store's clock), None if there is no such revision."""
        with self._tx() as db:
            row = db.execute(
                "SELECT created_unix FROM revisions WHERE number = ?", (revision,)
            ).fetchone()
        return None if row is None else float(row[0])

    def revisions(self) -> list[RevisionRow]:
        with self._tx() as db:
            rows = db.execute("SELECT * FROM revisions ORDER BY number").fetchall()
            keys = {
                r["function_id"]: self._function_key(db, r["function_id"])
                for r in rows if r["function_id"] is not None
            }
        return [
            RevisionRow(r["number"], r["created_unix"], keys.get(r["function_id"]), r["kind"],
                        r["author"], json.loads(r["change"]), r["subject"])
            for r in rows
        ]

    def config_at(self, revision: int) -> ConfigAt:
        """The whole configuration as it was right after `revision`, rebuilt from the revision
        log (each row holds its function's full state), so it is exact for any past revision."""
        with self._tx() as db:
            current = self._revision(db)
            if not 0 <= revision <= current:
                raise NotFound(f"no revision {revision} (current is {current})")
            created = db.execute(
                "SELECT created_unix FROM revisions WHERE number = ?", (revision,)
            ).fetchone()
            rows = db.execute(
                "SELECT r.function_id, r.state FROM revisions r JOIN (SELECT function_id, "
                "MAX(number) AS n FROM revisions WHERE number <= ? AND function_id IS NOT NULL "
                "AND kind != 'config' GROUP BY function_id) m ON r.number = m.n "
                "ORDER BY r.function_id",
                (revision,),
            ).fetchall()
            values = {
                r[0]: _snapshot_values(json.loads(r[1])) for r in db.execute(
                    "SELECT r.function_id, r.state FROM revisions r JOIN (SELECT function_id, "
                    "MAX(number) AS n FROM revisions WHERE kind = 'config' AND number <= ? "
                    "GROUP BY function_id) m ON r.number = m.n", (revision,),
                )
            }  # fmt: skip
            regions = tuple(
                Region.from_state(s) for s in self._subjects_at(db, "region", revision)
            )
            nodes = tuple(
                NodeEndpoint(s["node"], s["region"], s["url"], s.get("ipv4", ""),
                             s.get("ipv6", ""))
                for s in self._subjects_at(db, "node", revision)
                if s["url"]
            )
            resolved = []
            for row in rows:
                s = json.loads(row["state"])
                if s["stable"] is None:  # deleted as of this revision
                    continue
                state = FunctionState(
                    s["function"], s["stable"], s["canary"], s["canary_percent"], s["sticky"],
                    tuple(_split_route(r) for r in s["routes"]),
                )
                resolved.append(
                    Resolved(
                        state,
                        self._version_row(db, row["function_id"], state.function, state.stable),
                        None if state.canary is None
                        else self._version_row(db, row["function_id"], state.function,
                                               state.canary),
                        values.get(row["function_id"], {}),
                    )
                )
        return ConfigAt(
            revision, created[0] if created else 0.0, tuple(resolved), regions, nodes
        )

    @staticmethod
    def _subjects_at(db: sqlite3.Connection, kind: str, revision: int) -> list[dict[str, Any]]:
        """The newest state of every region (or node) as of `revision`, by subject."""
        rows = db.execute(
            "SELECT r.state FROM revisions r JOIN (SELECT subject, MAX(number) AS n "
            "FROM revisions WHERE kind = ? AND number <= ? GROUP BY subject) m "
            "ON r.number = m.n ORDER BY r.subject",
            (kind, revision),
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def _write_subject(
        self, db: sqlite3.Connection, kind: str, subject: str, before: dict[str, Any],
        after: dict[str, Any], author: str,
    ) -> int:
        change = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}
        number = self._revision(db) + 1
        db.execute(
            "INSERT INTO revisions (number, created_unix, function_id, subject, kind, author, "
            "state, change) VALUES (?, ?, NULL, ?, ?, ?, ?, ?)",
            (number, self.now(), subject, kind, author, _dumps(after), _dumps(change)),
        )
        return number

    def _version_row(self, db: sqlite3.Connection, fid: int, key: str, number: int) -> Version:
        row = db.execute(
            "SELECT * FROM versions WHERE function_id = ? AND number = ?", (fid, number)
        ).fetchone()
        return self._version(key, row)

    # --- nodes ----------------------------------------------------------------------------------

    def report_node(
        self, node_id: str, region: str, revision: int, healthy: bool,
        convergence_ms: float | None, last_error: str = "", url: str = "",
        requests_total: int | None = None, ipv4: str = "", ipv6: str = "",
    ) -> int | None:
        """Records a node's report. A node that joins with a URL, or changes its region, URL or
        DNS addresses, changes where spilled requests and DNS answers may go: that is one
        "node" revision, whose number is returned (None when the report changed no
        configuration)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("store is closed")
            row = self._db.execute(
                "SELECT region, url, ipv4, ipv6 FROM nodes WHERE id = ?", (node_id,)
            ).fetchone()
            known = tuple(row) if row is not None else (region, "", "", "")
            args = (node_id, region, revision, healthy, convergence_ms, last_error, url,
                    requests_total, ipv4, ipv6)
            if known != (region, url, ipv4, ipv6):
                with self._tx() as db:
                    self._report_node(db, *args)
                    keys = ("region", "url", "ipv4", "ipv6")
                    before = {"node": node_id, **dict(zip(keys, known, strict=True))}
                    after = {"node": node_id, **dict(zip(keys, (region, url, ipv4, ipv6),
                                                         strict=True))}
                    return self._write_subject(db, "node", node_id, before, after, node_id)
            # A report that changes no configuration is liveness: it need not survive a power
            # cut, so it skips the fsync (WAL with synchronous=NORMAL stays consistent). Fifty
            # nodes report at the same moment after every deploy; fsyncs would queue up.
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._tx() as db:
                    self._report_node(db, *args)
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
            return None

    def _report_node(
        self, db: sqlite3.Connection, node_id: str, region: str, revision: int, healthy: bool,
        convergence_ms: float | None, last_error: str, url: str, requests_total: int | None,
        ipv4: str, ipv6: str,
    ) -> None:
        now = self.now()
        row = db.execute(
            "SELECT last_report_unix, requests_total FROM nodes WHERE id = ?", (node_id,)
        ).fetchone()
        rate = None
        if row is not None and requests_total is not None and row["requests_total"] is not None:
            elapsed = now - row["last_report_unix"]
            delta = requests_total - row["requests_total"]
            if elapsed > 0 and delta >= 0:  # a restarted node's counter starts again from 0
                rate = delta / elapsed
        db.execute(
            "INSERT INTO nodes (id, region, applied_revision, last_report_unix, healthy, "
            "convergence_ms, last_error, url, requests_total, requests_per_s, ipv4, ipv6) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO "
            "UPDATE SET region = excluded.region, "
            "applied_revision = excluded.applied_revision, "
            "last_report_unix = excluded.last_report_unix, healthy = excluded.healthy, "
            "convergence_ms = COALESCE(excluded.convergence_ms, nodes.convergence_ms), "
            "last_error = excluded.last_error, url = excluded.url, "
            "requests_total = excluded.requests_total, requests_per_s = excluded.requests_per_s, "
            "ipv4 = excluded.ipv4, ipv6 = excluded.ipv6",
            (node_id, region, revision, now, int(healthy), convergence_ms, last_error, url,
             requests_total, rate, ipv4, ipv6),
        )

    def forget_node(self, node_id: str, stale_after_s: float, author: str) -> tuple[Node, int]:
        """Deletes a node that stopped reporting more than `stale_after_s` ago (NodeAlive if it
        did not), and returns its last row and the "node" revision that takes its endpoint out
        of snapshots. Should it report again, it joins like a new node."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)).fetchone()
            if row is None:
                raise NotFound(f"no node {node_id!r}")
            node = _node(row)
            silent_s = self.now() - node.last_report_unix
            if silent_s <= stale_after_s:
                raise NodeAlive(
                    f"node {node_id!r} reported {max(silent_s, 0):.0f} s ago; only a node "
                    f"silent for over {stale_after_s:g} s can be forgotten"
                )
            db.execute("DELETE FROM nodes WHERE id = ?", (node_id,))
            keys = ("region", "url", "ipv4", "ipv6")
            before = {"node": node_id, **{k: row[k] for k in keys}}
            after = {"node": node_id, "region": node.region, "url": "", "ipv4": "", "ipv6": ""}
            return node, self._write_subject(db, "node", node_id, before, after, author)

    def nodes(self) -> list[Node]:
        with self._tx() as db:
            rows = db.execute("SELECT * FROM nodes ORDER BY region, id").fetchall()
        return [_node(r) for r in rows]

    # --- regions (operator configuration; not part of any tenant) -------------------------------
    # Every change is one "region" revision holding the region's whole state, so snapshots carry
    # regions and the configuration at any past revision can be rebuilt, as for functions.

    def regions(self) -> dict[str, Region]:
        with self._tx() as db:
            rows = db.execute("SELECT * FROM regions ORDER BY name").fetchall()
        return {r["name"]: _region(r) for r in rows}

    def known_regions(self) -> set[str]:
        """Configured regions and regions nodes report from."""
        with self._tx() as db:
            rows = db.execute("SELECT name FROM regions UNION SELECT region FROM nodes")
            return {r[0] for r in rows}

    def set_region(
        self, name: str, latitude_deg: float, longitude_deg: float, weight: int | None,
        author: str,
    ) -> RegionChange:
        """Creates or updates a region's location and weight (None keeps the current weight).
        Its drain, if any, is kept."""
        try:
            check_region_fields(latitude_deg, longitude_deg, weight)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        with self._tx() as db:
            old = self._region(db, name)
            new = Region(
                name, float(latitude_deg), float(longitude_deg),
                old.weight if weight is None else weight, old.drain,
            )  # fmt: skip
            return self._write_region(db, old, new, author)

    def set_region_drain(
        self, region: str, direction: str, over_s: float, author: str = ""
    ) -> RegionChange:
        """Starts a ramp from the region's share right now, so a drain reversed halfway
        undrains from where it got to, without a jump. Draining a drained region (or
        undraining an active one) changes nothing. The region must be known: configured or
        reported by a node, so a typo does not create a region."""
        if direction not in ("drain", "undrain"):
            raise BadRequest(f"direction must be drain or undrain, got {direction!r}")
        with self._tx() as db:
            known = db.execute(
                "SELECT 1 FROM regions WHERE name = ? UNION SELECT 1 FROM nodes WHERE region = ?",
                (region, region),
            ).fetchone()
            if known is None:
                names = [r[0] for r in db.execute(
                    "SELECT name FROM regions UNION SELECT region FROM nodes ORDER BY 1"
                )]  # fmt: skip
                raise NotFound(f"no region {region!r} (known: {', '.join(names) or 'none'})")
            old = self._region(db, region)
            now = self.now()
            current = old.share(now)
            target = 0.0 if direction == "drain" else 1.0
            if current == target and (old.drain is None or old.drain.direction == direction):
                return RegionChange(self._revision(db), False, old)
            drain: RegionDrain | None = RegionDrain(region, direction, now, over_s, current)
            if direction == "undrain" and over_s <= 0:
                drain = None  # back to full share at once: no ramp left to remember
            new = Region(old.name, old.latitude_deg, old.longitude_deg, old.weight, drain)
            return self._write_region(db, old, new, author)

    @staticmethod
    def _region(db: sqlite3.Connection, name: str) -> Region:
        row = db.execute("SELECT * FROM regions WHERE name = ?", (name,)).fetchone()
        return Region(name) if row is None else _region(row)

    def _write_region(
        self, db: sqlite3.Connection, old: Region, new: Region, author: str
    ) -> RegionChange:
        if old == new:
            return RegionChange(self._revision(db), False, new)
        d = new.drain
        db.execute(
            "INSERT INTO regions (name, latitude, longitude, weight, drain_direction, "
            "drain_started_unix, drain_over_s, drain_from_share) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET latitude = excluded.latitude, "
            "longitude = excluded.longitude, weight = excluded.weight, "
            "drain_direction = excluded.drain_direction, "
            "drain_started_unix = excluded.drain_started_unix, "
            "drain_over_s = excluded.drain_over_s, drain_from_share = excluded.drain_from_share",
            (new.name, new.latitude_deg, new.longitude_deg, new.weight,
             d and d.direction, d and d.started_unix, d and d.over_s, d and d.from_share),
        )  # fmt: skip
        number = self._write_subject(
            db, "region", new.name, old.state_json(), new.state_json(), author
        )
        return RegionChange(number, True, new)


def _region(r: sqlite3.Row) -> Region:
    drain = None
    if r["drain_direction"] is not None:
        drain = RegionDrain(
            r["name"], r["drain_direction"], r["drain_started_unix"], r["drain_over_s"],
            r["drain_from_share"],
        )
    return Region(r["name"], r["latitude"], r["longitude"], r["weight"], drain)


def _node(r: sqlite3.Row) -> Node:
    return Node(r["id"], r["region"], r["applied_revision"], r["last_report_unix"],
                bool(r["healthy"]), r["convergence_ms"], r["last_error"], r["url"],
                r["requests_total"], r["requests_per_s"], r["ipv4"], r["ipv6"])  # fmt: skip


def _token_info(r: sqlite3.Row) -> TokenInfo:
    return TokenInfo(
        r[0], r[1], r[2], tuple(x for x in r[3].split(",") if x), r[4], r[5], r[6], r[7]
    )


def _snapshot_values(state: dict[str, Any]) -> dict[str, str | bytes]:
    """A "config" revision's values as snapshots carry them: secrets as sealed bytes."""
    secret = set(state.get("secret", ()))
    return {k: from_text(v) if k in secret else v for k, v in state["values"].items()}


def _split_route(spec: str) -> tuple[str, str]:
    host, slash, path = spec.partition("/")
    return host, slash + path
