"""The networked bus: Redis Streams with consumer groups.

Keys, all under ``prefix``:

* ``stream:<stream>``  the stream itself; each entry has fields ``id`` and ``payload``.
* ``ids:<stream>``     set of every msg_id ever published (dedupe survives acks).
* ``entry:<stream>``   hash msg_id -> stream entry id, so ``ack`` can take msg_ids.
* ``pointers``         hash key -> JSON value.
* ``trimlock:<stream>`` held by the one process archiving that stream.

With ``keep`` set, a stream is bounded: entries older than its newest ``keep``
that every consumer group has acked (on a :data:`RECORD_STREAMS` stream with
no group: all of them) are appended to ``<archive_dir>/<stream>.jsonl``, fsynced,
and only then trimmed from Redis. :meth:`RedisBus.history` reads the archive and
then the live stream, skipping entry ids already archived, so a process killed
between the two steps leaves neither a gap nor a duplicate. A consumer group
created after a trim starts at the oldest entry still in Redis.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from sparring.bus.base import BusError, Delivery
from sparring.bus.streams import RECORD_STREAMS
from sparring.redact import mask_text

# SADD decides whether the id is new; the XADD and the id->entry mapping happen
# in the same script so a crash can never leave an id recorded without its entry.
_PUBLISH_LUA = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  local eid = redis.call('XADD', KEYS[2], '*', 'id', ARGV[1], 'payload', ARGV[2])
  redis.call('HSET', KEYS[3], ARGV[1], eid)
  return 1
end
return 0
"""

# XAUTOCLAIM scans a bounded slice of the PEL per call; cap the rounds so a huge
# PEL of fresh entries cannot turn one read into a long loop.
_MAX_CLAIM_ROUNDS = 8

# A trim moves at most this many entries; the next publish or ack goes on.
_TRIM_BATCH = 10_000
# A trimmer that dies holding the lock blocks others this long at most.
_TRIM_LOCK_MS = 60_000
_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_CHUNK = 1 << 16
# Retries of a command whose connection dropped: 0.05 s doubling to 1 s, ~35 s in all.
RECONNECT_TRIES = 40

_Entry = tuple[str, dict[str, str] | None]
_Eid = tuple[int, int]
_log = logging.getLogger(__name__)


class RedisBus:
    """A :class:`~sparring.bus.base.Bus` on a Redis server (6.2+ for XAUTOCLAIM)."""

    def __init__(
        self,
        url: str,
        prefix: str = "sparring",
        *,
        keep: int | None = None,
        archive_dir: str | Path | None = None,
        connect_timeout_s: float = 5.0,
    ) -> None:
        """``keep``: entries each stream keeps in Redis (None: never trim);
        ``archive_dir``: where trimmed entries go, and where history() finds them."""
        if keep is not None and archive_dir is None:
            raise ValueError("a Redis bus that trims (keep) needs an archive_dir")
        self.url = url
        self.prefix = prefix
        self.keep = keep
        self.archive_dir = Path(archive_dir) if archive_dir is not None else None
        # at most one trim attempt per stream this often, from publish and ack
        self.trim_interval_s = 1.0
        self._tried: dict[str, float] = {}
        # RESP2 pinned so stream replies keep one shape whatever the client default.
        self._r = redis.Redis.from_url(url, decode_responses=True, protocol=2)
        self._publish = self._r.register_script(_PUBLISH_LUA)
        self._unlock = self._r.register_script(_UNLOCK_LUA)
        self._groups: set[tuple[str, str]] = set()
        self._connect(connect_timeout_s)
        # Once connected, ride out a restart of redis-server (it reloads its
        # append-only file): a dropped connection is retried for ~30 s, not
        # raised into a trainer or an orchestrator task. Every command is safe
        # to repeat (publish dedupes by id, a read redelivers from the PEL).
        self._r.set_retry(Retry(ExponentialBackoff(cap=1.0, base=0.05), RECONNECT_TRIES))

    def _connect(self, timeout_s: float) -> None:
        """Fail at once with one line (the password masked) on a Redis that does
        not answer, waiting up to ``timeout_s`` for one that is starting."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._r.ping()
                return
            except redis.AuthenticationError as err:
                self._r.close()
                raise BusError(
                    f"{mask_text(self.url)}: Redis refused the login ({err}); "
                    "fix the password in bus.redis_url"
                ) from None
            except redis.ConnectionError as err:
                if time.monotonic() >= deadline:
                    self._r.close()
                    raise BusError(
                        f"{mask_text(self.url)}: no Redis answers ({err}); start "
                        "redis-server or fix bus.redis_url"
                    ) from None
                time.sleep(0.1)

    def _key(self, kind: str, stream: str) -> str:
        return f"{self.prefix}:{kind}:{stream}"

    def publish(self, stream: str, msg_id: str, payload: dict[str, Any]) -> bool:
        keys = [self._key("ids", stream), self._key("stream", stream), self._key("entry", stream)]
        stored = bool(self._publish(keys=keys, args=[msg_id, json.dumps(payload)]))
        self._maybe_trim(stream)
        return stored

    def _ensure_group(self, stream: str, group: str) -> None:
        if (stream, group) in self._groups:
            return
        try:
            # id=0: a group created after messages were published still gets them all.
            self._r.xgroup_create(self._key("stream", stream), group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add((stream, group))

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
        self._ensure_group(stream, group)
        skey = self._key("stream", stream)
        try:
            entries = self._own_pending(skey, group, consumer, count)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # redis-server restarted and lost the group's creation (appendfsync
            # everysec keeps the last second or so only in memory): create it
            # again; its messages are delivered again (at-least-once, ids dedupe).
            self._groups.discard((stream, group))
            self._ensure_group(stream, group)
            entries = self._own_pending(skey, group, consumer, count)
        if len(entries) < count:
            seen = {eid for eid, _ in entries}
            entries += self._claim_stale(
                skey, group, consumer, count - len(entries), claim_after_s, seen
            )
        if len(entries) < count:
            # Only block when nothing else is ready; redis-py treats block=0 as forever.
            block = block_ms if block_ms > 0 and not entries else None
            entries += self._read_new(skey, group, consumer, count - len(entries), block)
        return [_delivery(stream, fields) for _, fields in entries if fields is not None]

    def _own_pending(self, skey: str, group: str, consumer: str, count: int) -> list[_Entry]:
        # Reading from id "0" replays this consumer's PEL without touching other consumers'.
        return _entries(self._r.xreadgroup(group, consumer, {skey: "0"}, count=count))

    def _claim_stale(
        self,
        skey: str,
        group: str,
        consumer: str,
        want: int,
        claim_after_s: float,
        seen: set[str],
    ) -> list[_Entry]:
        out: list[_Entry] = []
        cursor = "0-0"
        for _ in range(_MAX_CLAIM_ROUNDS):
            reply = self._r.xautoclaim(
                skey, group, consumer, int(claim_after_s * 1000), start_id=cursor, count=want
            )
            cursor, claimed = reply[0], reply[1]
            for eid, fields in claimed:
                # Our own idle entries come back here too; they were already returned.
                if eid not in seen:
                    seen.add(eid)
                    out.append((eid, fields))
            if cursor == "0-0" or len(out) >= want:
                break
        return out[:want]

    def _read_new(
        self, skey: str, group: str, consumer: str, count: int, block: int | None
    ) -> list[_Entry]:
        return _entries(self._r.xreadgroup(group, consumer, {skey: ">"}, count=count, block=block))

    def ack(self, stream: str, group: str, msg_ids: list[str]) -> None:
        if not msg_ids:
            return
        eids = [e for e in self._r.hmget(self._key("entry", stream), msg_ids) if e]
        if eids:
            self._r.xack(self._key("stream", stream), group, *eids)
        self._maybe_trim(stream)

    def pending(self, stream: str, group: str) -> int:
        skey = self._key("stream", stream)
        try:
            groups = self._r.xinfo_groups(skey)
        except redis.ResponseError:  # no such stream yet
            return 0
        info = next((g for g in groups if g["name"] == group), None)
        if info is None:
            # A group created now would start at id 0 and owe what Redis holds.
            return int(self._r.xlen(skey))
        lag = info.get("lag")
        if lag is None:
            # Redis < 7 or a lag it cannot compute: count what lies past the group's cursor.
            lag = len(_rows(self._r.xrange(skey, f"({info['last-delivered-id']}", "+")))
        return int(info["pending"]) + int(lag)

    def length(self, stream: str) -> int:
        # every id ever stored, archived or live: the stream itself shrinks on a trim
        return int(self._r.scard(self._key("ids", stream)))

    def history(self, stream: str) -> list[Delivery]:
        # Redis first: an entry trimmed after this read was archived before it.
        rows = _rows(self._r.xrange(self._key("stream", stream), "-", "+"))
        archived = self._read_archive(stream)
        last = archived[-1][0] if archived else (-1, -1)
        live = [
            _delivery(stream, fields)
            for eid, fields in rows
            if fields is not None and _eid(eid) > last
        ]
        return [d for _, d in archived] + live

    def _archive_path(self, stream: str) -> Path | None:
        return self.archive_dir / f"{stream}.jsonl" if self.archive_dir is not None else None

    def _read_archive(self, stream: str) -> list[tuple[_Eid, Delivery]]:
        path = self._archive_path(stream)
        if path is None or not path.is_file():
            return []
        out: list[tuple[_Eid, Delivery]] = []
        for line in path.read_bytes().splitlines():
            try:
                rec = json.loads(line)
                eid = _eid(rec["eid"])
                delivery = Delivery(stream, rec["id"], rec["payload"])
            except (ValueError, KeyError, TypeError):
                continue  # the torn end of a write that died: its entries are still live
            if not out or eid > out[-1][0]:
                out.append((eid, delivery))
        return out

    def _maybe_trim(self, stream: str) -> None:
        if self.keep is None:
            return
        now = time.monotonic()
        if now - self._tried.get(stream, float("-inf")) < self.trim_interval_s:
            return
        self._tried[stream] = now
        try:
            self.trim(stream)
        except OSError as err:
            # Nothing was trimmed: Redis keeps the entries until the archive can be written.
            _log.warning(
                "bus archive %s not written (%s); nothing trimmed", self._archive_path(stream), err
            )

    def trim(self, stream: str) -> int:
        """Move the entries of ``stream`` past its newest ``keep`` that every
        consumer group has acked to the archive; returns how many left Redis."""
        path = self._archive_path(stream)
        if self.keep is None or path is None:
            return 0
        if int(self._r.xlen(self._key("stream", stream))) <= self.keep:
            return 0  # the common case: no lock taken
        lock, token = self._key("trimlock", stream), uuid.uuid4().hex
        if not self._r.set(lock, token, nx=True, px=_TRIM_LOCK_MS):
            return 0  # another process is trimming it
        try:
            return self._trim_locked(stream, path, self.keep)
        finally:
            self._unlock(keys=[lock], args=[token])

    def _trim_locked(self, stream: str, path: Path, keep: int) -> int:
        skey = self._key("stream", stream)
        excess = int(self._r.xlen(skey)) - keep
        bound = self._acked_below(stream, skey) if excess > 0 else None
        if bound is None:
            return 0
        rows = _rows(self._r.xrange(skey, "-", "+", count=min(excess, _TRIM_BATCH)))
        take: list[_Entry] = []
        for eid, fields in rows:
            if _eid(eid) >= bound:
                break  # what every group has acked is a prefix of the stream
            take.append((eid, fields))
        if not take:
            return 0
        done = _last_archived(path)
        _append(path, [_line(eid, f) for eid, f in take if f is not None and _eid(eid) > done])
        last = _eid(take[-1][0])
        pipe = self._r.pipeline(transaction=True)
        pipe.xtrim(skey, minid=f"{last[0]}-{last[1] + 1}", approximate=False)
        msg_ids = [f["id"] for _, f in take if f is not None]
        if msg_ids:  # ack() of an archived message finds no entry: nothing left to ack
            pipe.hdel(self._key("entry", stream), *msg_ids)
        pipe.execute()
        return len(take)

    def _acked_below(self, stream: str, skey: str) -> _Eid | None:
        """The entry id below which every group has acked all entries (None: none
        may go)."""
        try:
            groups = self._r.xinfo_groups(skey)
        except redis.ResponseError:
            return None
        if not groups:
            # a group created later would expect every entry: only record streams go
            return (2**64, 0) if stream in RECORD_STREAMS else None
        bounds = []
        for g in groups:
            ms, seq = _eid(g["last-delivered-id"])
            bound = (ms, seq + 1)  # never past what the group has read
            if int(g["pending"]):
                first = self._r.xpending(skey, g["name"])["min"]
                if first is not None:  # None: all acked since XINFO
                    bound = min(bound, _eid(first))
            bounds.append(bound)
        return min(bounds)

    def set_pointer(self, key: str, value: dict[str, Any]) -> None:
        self._r.hset(f"{self.prefix}:pointers", key, json.dumps(value))

    def get_pointer(self, key: str) -> dict[str, Any] | None:
        raw = self._r.hget(f"{self.prefix}:pointers", key)
        return json.loads(raw) if raw is not None else None

    def close(self) -> None:
        self._r.close()


def _entries(reply: Any) -> list[_Entry]:
    """Flatten an XREADGROUP reply for one stream into (entry id, fields) pairs."""
    if not reply:
        return []
    return [(eid, fields) for _, rows in reply for eid, fields in rows]


def _rows(reply: Any) -> list[_Entry]:
    """An XRANGE reply; with decode_responses every id and field is a str."""
    return list(reply or [])


def _delivery(stream: str, fields: dict[str, str]) -> Delivery:
    return Delivery(stream, fields["id"], json.loads(fields["payload"]))


def _eid(entry_id: str) -> _Eid:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _line(eid: str, fields: dict[str, str]) -> bytes:
    rec = {"eid": eid, "id": fields["id"], "payload": json.loads(fields["payload"])}
    return (json.dumps(rec) + "\n").encode()


def _line_start(f: Any, end: int) -> int:
    """Offset just past the last newline before ``end`` (0 if there is none)."""
    pos = end
    while pos > 0:
        step = min(_CHUNK, pos)
        f.seek(pos - step)
        i = f.read(step).rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


def _last_archived(path: Path) -> _Eid:
    """The entry id of the archive's last line, after cutting off a torn one
    (its entries were never trimmed, so they are written again)."""
    if not path.is_file():
        return (-1, -1)
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        end = _line_start(f, size)
        if end < size:
            f.truncate(end)
        while end > 0:
            start = _line_start(f, end - 1)
            f.seek(start)
            try:
                return _eid(json.loads(f.read(end - start))["eid"])
            except (ValueError, KeyError, TypeError):
                end = start  # a damaged line: the one before it counts
    return (-1, -1)


def _append(path: Path, lines: list[bytes]) -> None:
    """Append whole lines and fsync them, or leave the file as it was."""
    if not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            data = memoryview(b"".join(lines))
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)  # a full disk: no torn line is left behind
            raise
    finally:
        os.close(fd)
    if new:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
