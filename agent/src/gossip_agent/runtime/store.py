"""Sqlite journal (WAL) of the entries this host owns, the networks it joined through the API
(with the vxlan_id and subnet given there), its Lamport time and incarnation.

Everything else is soft state rebuilt from peers. Deletes are kept as tombstones until the
tombstone TTL: after a crash they are re-announced too, so a peer that missed the delete cannot
keep the entry alive.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.wire import TableEvent
from .config import NetworkConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    network TEXT NOT NULL, tbl TEXT NOT NULL, key TEXT NOT NULL,
    value BLOB NOT NULL, lamport INTEGER NOT NULL, wall_ms INTEGER NOT NULL, deleted INTEGER NOT NULL,
    PRIMARY KEY (network, tbl, key)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS networks (name TEXT PRIMARY KEY);
"""
LOCK_WAIT = 0.1  # seconds a write waits for another writer's lock on the journal

# Schema changes, applied in order to a journal at user_version i (new journals go through all:
# one path for old and new). Only append.
MIGRATIONS = [
    "ALTER TABLE networks ADD COLUMN vxlan_id INTEGER; ALTER TABLE networks ADD COLUMN subnet TEXT;",
]


class Journal:
    def __init__(self, path: Path, owner: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.owner = owner
        # A writer locked out (someone else holds the journal's lock) blocks the event loop while
        # it waits: 0.1 s, not sqlite's 5 s, then the write fails and is retried later.
        self.db = sqlite3.connect(path, isolation_level=None, timeout=LOCK_WAIT)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash
        self.db.executescript(SCHEMA)
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self.db.executescript(f"BEGIN; {script} PRAGMA user_version = {number}; COMMIT;")

    def record(self, events: Iterable[TableEvent]) -> None:
        """Journal own writes (one transaction for a whole batch)."""
        rows = [(e.network, e.table, e.key, e.value, e.lamport, e.wall_ms, int(e.deleted)) for e in events]
        if not rows:
            return
        with self._transaction():
            self.db.executemany(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (network, tbl, key) DO UPDATE SET "
                "value=excluded.value, lamport=excluded.lamport, wall_ms=excluded.wall_ms, deleted=excluded.deleted",
                rows,
            )
            self.db.execute(
                "INSERT INTO meta VALUES ('lamport', ?) ON CONFLICT (name) DO UPDATE SET "
                "value=max(value, excluded.value)",
                (max(r[4] for r in rows),),
            )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """All or nothing; a failed one is rolled back, so the next can begin (sqlite3.Error
        raised: locked by another writer, disk full)."""
        self.db.execute("BEGIN")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # a failed COMMIT may or may not have rolled back
                self.db.execute("ROLLBACK")
            raise

    def attached(self, network: str, vxlan_id: int | None = None, subnet: str | None = None) -> None:
        """Networks attached through the API are re-attached after a restart, like the config's,
        with the parameters given then (None: the config's, if any, apply)."""
        self.db.execute(
            "INSERT INTO networks (name, vxlan_id, subnet) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "vxlan_id=coalesce(excluded.vxlan_id, vxlan_id), subnet=coalesce(excluded.subnet, subnet)",
            (network, vxlan_id, subnet),
        )

    def detached(self, network: str) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM networks WHERE name = ?", (network,))
            self.db.execute("DELETE FROM entries WHERE network = ?", (network,))

    def networks(self) -> list[NetworkConfig]:
        rows = self.db.execute("SELECT name, vxlan_id, subnet FROM networks ORDER BY name")
        return [NetworkConfig(name, vxlan_id, subnet) for name, vxlan_id, subnet in rows]

    def set_meta(self, name: str, value: int) -> None:
        self.db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value=excluded.value", (name, value)
        )

    def lease_lamport(self, value: int) -> None:
        """Record, durably (fsync), that this life may use Lamport times up to `value`."""
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            self.set_meta("lamport_lease", value)
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    def meta(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def prune(self, now_ms: int, tombstone_ttl: float) -> None:
        """Forget tombstones older than the TTL (peers have reaped theirs by now)."""
        self.db.execute("DELETE FROM entries WHERE deleted = 1 AND wall_ms < ?", (now_ms - int(tombstone_ttl * 1000),))

    def load(self, now_ms: int, tombstone_ttl: float) -> list[TableEvent]:
        """Own entries to re-announce; tombstones older than the TTL are dropped first."""
        self.prune(now_ms, tombstone_ttl)
        rows = self.db.execute("SELECT network, tbl, key, value, lamport, wall_ms, deleted FROM entries").fetchall()
        return [TableEvent(n, t, k, bytes(v), self.owner, lam, wall, bool(d)) for n, t, k, v, lam, wall, d in rows]

    def close(self) -> None:
        self.db.close()
