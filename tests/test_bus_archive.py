"""A Redis bus bounds its memory without losing the run's record: entries every
consumer group has acked leave Redis for a JSONL archive in the run directory,
and history() reads archive and stream as one, in order, never twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from sparring.bus import ARCHIVE_DIR, make_bus
from sparring.bus.redis import RedisBus
from sparring.workqueue import WorkQueue


def _bus(url: str, archive: Path, keep: int | None = 3) -> RedisBus:
    bus = RedisBus(url, prefix="sparring:run-t", keep=keep, archive_dir=archive)
    bus.trim_interval_s = 0.0  # every publish and ack may trim
    return bus


def _publish(bus: RedisBus, stream: str, n: int) -> list[str]:
    ids = [f"m{i:03d}" for i in range(n)]
    for i, msg_id in enumerate(ids):
        assert bus.publish(stream, msg_id, {"n": i})
    return ids


def _live(url: str, stream: str) -> int:
    return int(redis.Redis.from_url(url).xlen(f"sparring:run-t:stream:{stream}"))


def _archived(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_acked_entries_move_to_the_archive_and_history_keeps_them(
    redis_url: str, tmp_path: Path
) -> None:
    bus = _bus(redis_url, tmp_path)
    sent = _publish(bus, "pairs", 10)
    got = bus.read("pairs", "trainer", "t1", count=10)
    bus.ack("pairs", "trainer", [d.msg_id for d in got[:7]])

    assert _live(redis_url, "pairs") == 3  # the newest 3 stay, whatever their state
    assert _archived(tmp_path / "pairs.jsonl") == sent[:7]
    assert [d.msg_id for d in bus.history("pairs")] == sent
    assert [d.payload for d in bus.history("pairs")] == [{"n": i} for i in range(10)]
    assert bus.length("pairs") == 10
    assert not bus.publish("pairs", "m001", {"n": 1})  # an archived id is still known
    # another process reading the same run sees the same record
    reader = make_bus(redis_url, tmp_path / "bus.sqlite", namespace="run-t", archive_dir=tmp_path)
    assert [d.msg_id for d in reader.history("pairs")] == sent


def test_only_what_every_group_has_acked_leaves_redis(redis_url: str, tmp_path: Path) -> None:
    bus = _bus(redis_url, tmp_path, keep=0)
    sent = _publish(bus, "versions", 8)
    b = bus.read("versions", "swapper-b", "c", count=8)
    a = bus.read("versions", "swapper-a", "c", count=8)
    bus.ack("versions", "swapper-a", [d.msg_id for d in a])
    assert not (tmp_path / "versions.jsonl").exists()  # b has acked nothing yet
    # b acks 0-2 and 5: entry 3 is still pending for it, so 3 onwards stays
    bus.ack("versions", "swapper-b", [d.msg_id for d in b if d.msg_id in sent[:3] + [sent[5]]])
    assert _archived(tmp_path / "versions.jsonl") == sent[:3]
    assert _live(redis_url, "versions") == 5
    # the pending ones are still delivered to b
    assert [d.msg_id for d in bus.read("versions", "swapper-b", "c", count=8)] == [
        sent[3],
        sent[4],
        sent[6],
        sent[7],
    ]
    assert bus.pending("versions", "swapper-b") == 4
    assert [d.msg_id for d in bus.history("versions")] == sent


def test_a_stream_nobody_has_read_is_kept_unless_it_is_a_record(
    redis_url: str, tmp_path: Path
) -> None:
    bus = _bus(redis_url, tmp_path)
    pairs = _publish(bus, "pairs", 6)  # the trainer has not started: its group does not exist
    episodes = _publish(bus, "episodes", 6)  # only ever read whole
    assert _live(redis_url, "pairs") == 6
    assert _live(redis_url, "episodes") == 3
    assert [d.msg_id for d in bus.read("pairs", "trainer", "t", count=10)] == pairs
    assert [d.msg_id for d in bus.history("episodes")] == episodes


def test_a_trim_killed_after_the_archive_write_leaves_no_gap_and_no_duplicate(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = _bus(redis_url, tmp_path, keep=2)
    sent = _publish(bus, "episodes", 2)
    real_pipeline = bus._r.pipeline

    def dies_before_trimming(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # the process is killed between fsync and XTRIM

    monkeypatch.setattr(bus._r, "pipeline", dies_before_trimming)
    with pytest.raises(KeyboardInterrupt):
        _publish_more(bus, sent, 3)
    assert _archived(tmp_path / "episodes.jsonl") == sent[:1]
    assert _live(redis_url, "episodes") == 3  # archived, and still in Redis
    assert [d.msg_id for d in bus.history("episodes")] == sent

    monkeypatch.setattr(bus._r, "pipeline", real_pipeline)
    redis.Redis.from_url(redis_url).delete("sparring:run-t:trimlock:episodes")  # lock expiry
    # a torn line from another write that died midway is cut off, not read
    with (tmp_path / "episodes.jsonl").open("a") as f:
        f.write('{"eid": "99-0", "id": "m0')
    assert [d.msg_id for d in bus.history("episodes")] == sent
    _publish_more(bus, sent, 5)
    assert _archived(tmp_path / "episodes.jsonl") == sent[:3]  # m000 once, no torn line
    assert _live(redis_url, "episodes") == 2
    assert [d.msg_id for d in bus.history("episodes")] == sent


def _publish_more(bus: RedisBus, sent: list[str], upto: int) -> None:
    for i in range(len(sent), upto):
        sent.append(f"m{i:03d}")
        bus.publish("episodes", sent[-1], {"n": i})


def test_an_archive_that_cannot_be_written_trims_nothing(redis_url: str, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    bus = _bus(redis_url, blocked / "archive", keep=1)
    sent = _publish(bus, "episodes", 5)  # publishing goes on
    assert _live(redis_url, "episodes") == 5
    assert [d.msg_id for d in bus.history("episodes")] == sent


def test_task_ids_stay_unique_when_the_task_stream_is_trimmed(
    redis_url: str, tmp_path: Path
) -> None:
    # the work queue numbers a new task by the stream's length
    bus = make_bus(redis_url, tmp_path / "bus.sqlite", namespace="run-t", keep=2)
    assert isinstance(bus, RedisBus)
    bus.trim_interval_s = 0.0
    queue = WorkQueue(bus, "run-t", "o1", limit=12)
    made = []
    while (task := queue.next(set())) is not None:
        made.append(task)
        queue.done(task)
    assert made == [f"run-t-ep{n:05d}" for n in range(12)]
    assert _live(redis_url, "tasks") == 2
    assert (tmp_path / ARCHIVE_DIR / "tasks.jsonl").is_file()  # beside the SQLite path
    assert [d.msg_id for d in bus.history("tasks")] == made


def test_redis_keep_null_never_trims(redis_url: str, tmp_path: Path) -> None:
    bus = _bus(redis_url, tmp_path, keep=None)
    _publish(bus, "episodes", 5)
    assert _live(redis_url, "episodes") == 5
    assert not (tmp_path / "episodes.jsonl").exists()


def test_a_group_created_after_a_trim_starts_at_the_oldest_entry_left(
    redis_url: str, tmp_path: Path
) -> None:
    """The trade-off the conformance suite's trimming variant skips: a late
    group is owed only what is still in Redis; the archived rest stays in
    history()."""
    bus = _bus(redis_url, tmp_path, keep=2)
    sent = _publish(bus, "versions", 6)
    got = bus.read("versions", "early", "c", count=6)
    bus.ack("versions", "early", [d.msg_id for d in got])
    assert _archived(tmp_path / "versions.jsonl") == sent[:4]
    assert bus.pending("versions", "late") == 2
    assert [d.msg_id for d in bus.read("versions", "late", "c", count=6)] == sent[4:]
    assert [d.msg_id for d in bus.history("versions")] == sent
