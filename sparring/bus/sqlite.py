"""The embedded bus: one SQLite file shared by every process on a host.

WAL mode lets readers run beside the single writer; every state change is one
short ``BEGIN IMMEDIATE`` transaction, so two consumers racing for the same new
message serialise on the write lock and only one of them records the delivery.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sparring.bus.base import BusError, Delivery

# How long a connection waits for another process's write lock before failing.
_BUSY_TIMEOUT_MS = 30_000
# Poll interval while a blocking read waits for a message.
_POLL_S = 0.03

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (stream, msg_id)
);
CREATE INDEX IF NOT EXISTS messages_by_stream ON messages (stream, seq);
-- Per-group cursor: the highest seq ever handed to the group, so finding new
-- messages is a range scan instead of an anti-join over every delivery.
CREATE TABLE IF NOT EXISTS groups (
    stream TEXT NOT NULL,
    grp TEXT NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, grp)
);
CREATE TABLE IF NOT EXISTS deliveries (
    stream TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    delivered_at REAL NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, grp, seq)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (stream, grp, acked, seq);
CREATE TABLE IF NOT EXISTS pointers (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""

_Row = tuple[int, str, str]  # (seq, msg_id, payload json)


class SqliteBus:
    """A :class:`~sparring.bus.base.Bus` stored in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise BusError(
                f"{self.path}: a folder, not a SQLite file; bus.sqlite_path names the bus's "
                f"file, e.g. {self.path / 'bus.sqlite'}"
            )
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so each
        # transaction's lock mode (IMMEDIATE) is explicit.
        self._conn = sqlite3.connect(
            str(self.path),
            timeout=_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            self._open()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            if "locked" in str(err):
                raise  # another process holds it: not the file's fault
            # SQLite refuses a damaged file before writing to it: it stays as it was.
            raise BusError(
                f"{self.path}: not a readable SQLite bus ({err}); it was left untouched: "
                "restore it from a copy, or move it aside to start this run's bus afresh"
            ) from None

    def _open(self) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        self._set_wal()
        # NORMAL in WAL mode survives a killed process; only power loss can
        # drop the last commits, which at-least-once delivery tolerates.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._tx() as cur:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    cur.execute(stmt)

    def _set_wal(self) -> None:
        # Switching the journal mode takes an exclusive lock and fails at once
        # ("database is locked"), not after busy_timeout, while another
        # connection opens the same file; retry for as long as busy_timeout.
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """One short write transaction, serialised within this process by the lock
        and across processes by SQLite's write lock."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def publish(self, stream: str, msg_id: str, payload: dict[str, Any]) -> bool:
        with self._tx() as cur:
            cur.execute(
                "INSERT OR IGNORE INTO messages (stream, msg_id, payload, created_at)"
                " VALUES (?, ?, ?, ?)",
                (stream, msg_id, json.dumps(payload), time.time()),
            )
            return cur.rowcount == 1

    def read(
        self,
        stream: str,
        group: str,
        consumer: str,
        count: int = 16,
        block_ms: int = 0,
        claim_after_s: float = 60.0,
    ) -> list[Delivery]:
        if count <= 0:
            return []
        deadline = time.monotonic() + block_ms / 1000
        while True:
            rows = self._read_once(stream, group, consumer, count, claim_after_s)
            if rows or time.monotonic() >= deadline:
                return [Delivery(stream, msg_id, json.loads(p)) for _, msg_id, p in rows]
            time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    def _read_once(
        self, stream: str, group: str, consumer: str, count: int, claim_after_s: float
    ) -> list[_Row]:
        with self._tx() as cur:
            rows = _own_pending(cur, stream, group, consumer, count)
            if len(rows) < count:
                rows += _claim_stale(cur, stream, group, consumer, count - len(rows), claim_after_s)
            if len(rows) < count:
                rows += _take_new(cur, stream, group, consumer, count - len(rows))
            return rows

    def ack(self, stream: str, group: str, msg_ids: list[str]) -> None:
        if not msg_ids:
            return
        marks = ",".join("?" * len(msg_ids))
        with self._tx() as cur:
            cur.execute(
                "UPDATE deliveries SET acked = 1 WHERE stream = ? AND grp = ? AND seq IN"
                f" (SELECT seq FROM messages WHERE stream = ? AND msg_id IN ({marks}))",
                (stream, group, stream, *msg_ids),
            )

    def pending(self, stream: str, group: str) -> int:
        # Unacked deliveries plus everything past the group's cursor; a group
        # that has never read has cursor 0, so it owes the whole stream.
        ((n,),) = self._query(
            "SELECT"
            " (SELECT COUNT(*) FROM deliveries WHERE stream = ? AND grp = ? AND acked = 0)"
            " + (SELECT COUNT(*) FROM messages WHERE stream = ? AND seq >"
            "    COALESCE((SELECT last_seq FROM groups WHERE stream = ? AND grp = ?), 0))",
            (stream, group, stream, stream, group),
        )
        return int(n)

    def length(self, stream: str) -> int:
        ((n,),) = self._query("SELECT COUNT(*) FROM messages WHERE stream = ?", (stream,))
        return int(n)

    def history(self, stream: str) -> list[Delivery]:
        rows = self._query(
            "SELECT msg_id, payload FROM messages WHERE stream = ? ORDER BY seq", (stream,)
        )
        return [Delivery(stream, msg_id, json.loads(p)) for msg_id, p in rows]

    def set_pointer(self, key: str, value: dict[str, Any]) -> None:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO pointers (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (key, json.dumps(value), time.time()),
            )

    def get_pointer(self, key: str) -> dict[str, Any] | None:
        rows = self._query("SELECT value FROM pointers WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _own_pending(
    cur: sqlite3.Cursor, stream: str, group: str, consumer: str, limit: int
) -> list[_Row]:
    # Not re-stamping delivered_at: a consumer that keeps re-reading without
    # acking should not keep others from claiming the work (same as Redis).
    cur.execute(
        "SELECT m.seq, m.msg_id, m.payload FROM deliveries d"
        " JOIN messages m ON m.seq = d.seq"
        " WHERE d.stream = ? AND d.grp = ? AND d.consumer = ? AND d.acked = 0"
        " ORDER BY d.seq LIMIT ?",
        (stream, group, consumer, limit),
    )
    return list(cur.fetchall())


def _claim_stale(
    cur: sqlite3.Cursor,
    stream: str,
    group: str,
    consumer: str,
    limit: int,
    claim_after_s: float,
) -> list[_Row]:
    now = time.time()
    cur.execute(
        "SELECT m.seq, m.msg_id, m.payload FROM deliveries d"
        " JOIN messages m ON m.seq = d.seq"
        " WHERE d.stream = ? AND d.grp = ? AND d.consumer != ? AND d.acked = 0"
        " AND d.delivered_at <= ? ORDER BY d.seq LIMIT ?",
        (stream, group, consumer, now - claim_after_s, limit),
    )
    rows: list[_Row] = list(cur.fetchall())
    cur.executemany(
        "UPDATE deliveries SET consumer = ?, delivered_at = ?"
        " WHERE stream = ? AND grp = ? AND seq = ?",
        [(consumer, now, stream, group, seq) for seq, _, _ in rows],
    )
    return rows


def _take_new(
    cur: sqlite3.Cursor, stream: str, group: str, consumer: str, limit: int
) -> list[_Row]:
    cur.execute(
        "INSERT OR IGNORE INTO groups (stream, grp, last_seq) VALUES (?, ?, 0)", (stream, group)
    )
    cur.execute(
        "SELECT seq, msg_id, payload FROM messages"
        " WHERE stream = ? AND seq > (SELECT last_seq FROM groups WHERE stream = ? AND grp = ?)"
        " ORDER BY seq LIMIT ?",
        (stream, stream, group, limit),
    )
    rows: list[_Row] = list(cur.fetchall())
    if not rows:
        return rows
    now = time.time()
    cur.executemany(
        "INSERT INTO deliveries (stream, grp, seq, consumer, delivered_at) VALUES (?, ?, ?, ?, ?)",
        [(stream, group, seq, consumer, now) for seq, _, _ in rows],
    )
    cur.execute(
        "UPDATE groups SET last_seq = ? WHERE stream = ? AND grp = ?",
        (rows[-1][0], stream, group),
    )
    return rows
