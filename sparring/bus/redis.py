"""The networked bus: Redis Streams with consumer groups.

Keys, all under ``prefix``:

* ``stream:<stream>``  the stream itself; each entry has fields ``id`` and ``payload``.
* ``ids:<stream>``     set of every msg_id ever published (dedupe survives acks).
* ``entry:<stream>``   hash msg_id -> stream entry id, so ``ack`` can take msg_ids.
* ``pointers``         hash key -> JSON value.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from sparring.bus.base import Delivery

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

_Entry = tuple[str, dict[str, str] | None]


class RedisBus:
    """A :class:`~sparring.bus.base.Bus` on a Redis server (6.2+ for XAUTOCLAIM)."""

    def __init__(self, url: str, prefix: str = "sparring") -> None:
        self.url = url
        self.prefix = prefix
        # RESP2 pinned so stream replies keep one shape whatever the client default.
        self._r = redis.Redis.from_url(url, decode_responses=True, protocol=2)
        self._publish = self._r.register_script(_PUBLISH_LUA)
        self._groups: set[tuple[str, str]] = set()

    def _key(self, kind: str, stream: str) -> str:
        return f"{self.prefix}:{kind}:{stream}"

    def publish(self, stream: str, msg_id: str, payload: dict[str, Any]) -> bool:
        keys = [self._key("ids", stream), self._key("stream", stream), self._key("entry", stream)]
        return bool(self._publish(keys=keys, args=[msg_id, json.dumps(payload)]))

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

    def pending(self, stream: str, group: str) -> int:
        skey = self._key("stream", stream)
        try:
            groups = self._r.xinfo_groups(skey)
        except redis.ResponseError:  # no such stream yet
            return 0
        info = next((g for g in groups if g["name"] == group), None)
        if info is None:
            # A group created now would start at id 0 and owe the whole stream.
            return self.length(stream)
        lag = info.get("lag")
        if lag is None:
            # Redis < 7 or a lag it cannot compute: count what lies past the group's cursor.
            lag = len(_rows(self._r.xrange(skey, f"({info['last-delivered-id']}", "+")))
        return int(info["pending"]) + int(lag)

    def length(self, stream: str) -> int:
        return int(self._r.xlen(self._key("stream", stream)))

    def history(self, stream: str) -> list[Delivery]:
        rows = _rows(self._r.xrange(self._key("stream", stream), "-", "+"))
        return [_delivery(stream, fields) for _, fields in rows if fields is not None]

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
