"""One behavioural suite that every bus backend must pass, run against both."""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sparring.bus import Bus, Delivery, make_bus
from sparring.bus.redis import RedisBus
from sparring.bus.sqlite import SqliteBus

S = "work"  # not a RECORD_STREAMS name: a group created late must see all of it
Spec = tuple[str, str]  # ("sqlite", file path) or ("redis", url): picklable for child processes
_SPAWN = mp.get_context("spawn")


def open_bus(spec: Spec) -> Bus:
    kind, where = spec
    if kind == "redis-trim":  # trims all it may at every publish and ack
        url, archive = where.split("|")
        bus = RedisBus(url, keep=0, archive_dir=archive)
        bus.trim_interval_s = 0.0
        return bus
    return RedisBus(where) if kind == "redis" else SqliteBus(where)


def skip_if_trimming(bus: Bus) -> None:
    if isinstance(bus, RedisBus) and bus.keep is not None:
        pytest.skip(
            "a group created after a trim starts at the oldest entry left in Redis "
            "(asserted in test_bus_archive.py)"
        )


def ids(batch: list[Delivery]) -> list[str]:
    return [d.msg_id for d in batch]


def publish_n(bus: Bus, n: int, stream: str = S) -> list[str]:
    msg_ids = [f"m{i:03d}" for i in range(n)]
    for i, msg_id in enumerate(msg_ids):
        assert bus.publish(stream, msg_id, {"n": i})
    return msg_ids


@pytest.fixture(params=["sqlite", "redis", "redis-trim"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Spec:
    if request.param == "redis":
        return ("redis", request.getfixturevalue("redis_url"))
    if request.param == "redis-trim":
        return ("redis-trim", f"{request.getfixturevalue('redis_url')}|{tmp_path / 'archive'}")
    return ("sqlite", str(tmp_path / "bus.db"))


@pytest.fixture
def opener(spec: Spec) -> Iterator[Callable[[], Bus]]:
    """Opens further bus objects on the same backend, as another process would."""
    opened: list[Bus] = []

    def _open() -> Bus:
        opened.append(open_bus(spec))
        return opened[-1]

    yield _open
    for bus in opened:
        bus.close()


@pytest.fixture
def bus(opener: Callable[[], Bus]) -> Bus:
    return opener()


# --- child process bodies (module level so spawn can import them) ---------------


def _drain(spec: Spec, consumer: str, barrier: Any, out: Any) -> None:
    bus = open_bus(spec)
    barrier.wait()  # start together so the consumers really race
    got: list[str] = []
    while batch := bus.read(S, "g", consumer, count=5):
        got += ids(batch)
        bus.ack(S, "g", ids(batch))
    bus.close()
    out.put(got)


def _read_and_hang(spec: Spec, consumer: str, ready: Any) -> None:
    bus = open_bus(spec)
    bus.read(S, "g", consumer, count=100)
    ready.set()
    time.sleep(120)  # killed long before this ends; never acks


# --- the contract ----------------------------------------------------------------


def test_is_a_bus(bus: Bus) -> None:
    assert isinstance(bus, Bus)


def test_roundtrip_in_order(bus: Bus) -> None:
    sent = publish_n(bus, 5)
    got = bus.read(S, "g", "c1", count=10)
    assert ids(got) == sent
    assert [d.payload for d in got] == [{"n": i} for i in range(5)]
    assert all(d.stream == S for d in got)
    bus.ack(S, "g", ids(got))
    assert bus.read(S, "g", "c1") == []
    assert bus.pending(S, "g") == 0


def test_count_limits_a_read(bus: Bus) -> None:
    sent = publish_n(bus, 5)
    first = bus.read(S, "g", "c1", count=2)
    assert ids(first) == sent[:2]
    bus.ack(S, "g", ids(first))
    assert ids(bus.read(S, "g", "c1", count=10)) == sent[2:]


def test_duplicate_publish_stored_once(opener: Callable[[], Bus]) -> None:
    bus, other = opener(), opener()
    assert bus.publish(S, "a", {"v": 1})
    assert not bus.publish(S, "a", {"v": 2})
    assert bus.length(S) == 1
    got = bus.read(S, "g", "c1")
    bus.ack(S, "g", ids(got))
    # Dedupe must outlive the ack, and hold for every producer.
    assert not bus.publish(S, "a", {"v": 3})
    assert not other.publish(S, "a", {"v": 4})
    assert bus.length(S) == 1
    assert bus.history(S) == [Delivery(S, "a", {"v": 1})]
    assert bus.read(S, "g", "c1") == []


def test_same_id_on_different_streams_is_distinct(bus: Bus) -> None:
    assert bus.publish("episodes", "x", {})
    assert bus.publish("pairs", "x", {})
    assert bus.length("episodes") == bus.length("pairs") == 1


def test_unacked_redelivered_to_same_consumer_after_restart(
    opener: Callable[[], Bus],
) -> None:
    first = opener()
    sent = publish_n(first, 3)
    assert ids(first.read(S, "g", "c1", count=10)) == sent
    first.close()

    again = opener()
    assert again.read(S, "g", "c2") == []  # pending on c1, not yet stale
    assert ids(again.read(S, "g", "c1")) == sent
    again.ack(S, "g", sent)
    assert again.read(S, "g", "c1") == []
    assert again.pending(S, "g") == 0


def test_stale_pending_claimed_by_another_consumer(bus: Bus) -> None:
    sent = publish_n(bus, 3)
    assert ids(bus.read(S, "g", "c1", count=2)) == sent[:2]
    assert ids(bus.read(S, "g", "c2", claim_after_s=0.2)) == sent[2:]
    time.sleep(0.3)
    # Own pending first, then what c1 left idle too long.
    assert ids(bus.read(S, "g", "c2", claim_after_s=0.2)) == [sent[2], sent[0], sent[1]]
    assert bus.read(S, "g", "c1") == []  # the claim moved them off c1
    bus.ack(S, "g", sent)
    assert bus.pending(S, "g") == 0


def test_consumers_in_one_group_split_messages(bus: Bus) -> None:
    sent = publish_n(bus, 20)
    a = ids(bus.read(S, "g", "a", count=7))
    b = ids(bus.read(S, "g", "b", count=7))
    bus.ack(S, "g", a)  # else a's next read starts with its own pending again
    a += ids(bus.read(S, "g", "a", count=20))
    assert not set(a) & set(b)
    assert sorted(a + b) == sent


def test_threads_sharing_one_bus_split_messages(bus: Bus) -> None:
    sent = publish_n(bus, 60)
    results: dict[str, list[str]] = {}

    def drain(consumer: str) -> None:
        got: list[str] = []
        while batch := bus.read(S, "g", consumer, count=3):
            got += ids(batch)
            bus.ack(S, "g", ids(batch))
        results[consumer] = got

    threads = [threading.Thread(target=drain, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    everything = [m for got in results.values() for m in got]
    assert sorted(everything) == sent  # no message twice, none lost


def test_consumers_in_separate_processes_split_messages(spec: Spec, bus: Bus) -> None:
    sent = publish_n(bus, 120)
    barrier, out = _SPAWN.Barrier(2), _SPAWN.Queue()
    procs = [_SPAWN.Process(target=_drain, args=(spec, f"p{i}", barrier, out)) for i in range(2)]
    for p in procs:
        p.start()
    first, second = out.get(timeout=30), out.get(timeout=30)
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    assert not set(first) & set(second)
    assert sorted(first + second) == sent
    assert bus.pending(S, "g") == 0


def test_killed_consumer_work_redelivered_to_same_name(spec: Spec, bus: Bus) -> None:
    sent = publish_n(bus, 4)
    ready = _SPAWN.Event()
    child = _SPAWN.Process(target=_read_and_hang, args=(spec, "worker", ready))
    child.start()
    assert ready.wait(timeout=30)
    child.kill()
    child.join(timeout=10)
    assert child.exitcode == -signal.SIGKILL

    assert bus.pending(S, "g") == 4
    assert bus.read(S, "g", "other") == []
    assert ids(bus.read(S, "g", "worker")) == sent


def test_every_group_sees_every_message(bus: Bus) -> None:
    skip_if_trimming(bus)
    sent = publish_n(bus, 5)
    g1 = bus.read(S, "g1", "c", count=10)
    bus.ack(S, "g1", ids(g1))
    assert ids(g1) == sent
    assert bus.pending(S, "g2") == 5
    assert ids(bus.read(S, "g2", "c", count=10)) == sent


def test_group_created_late_sees_earlier_messages(bus: Bus) -> None:
    sent = publish_n(bus, 2)
    bus.read(S, "early", "c")
    more = ["late-1"]
    bus.publish(S, "late-1", {})
    assert ids(bus.read(S, "late", "c", count=10)) == sent + more


def test_pending_counts(bus: Bus) -> None:
    skip_if_trimming(bus)
    assert bus.pending(S, "g") == 0
    sent = publish_n(bus, 5)
    assert bus.pending(S, "g") == 5  # never read: everything is owed
    got = bus.read(S, "g", "c", count=2)
    assert bus.pending(S, "g") == 5  # read but unacked still counts
    bus.ack(S, "g", ids(got)[:1])
    assert bus.pending(S, "g") == 4
    rest = bus.read(S, "g", "c", count=10)
    assert ids(rest) == [sent[1], *sent[2:]]
    bus.ack(S, "g", ids(rest))
    assert bus.pending(S, "g") == 0
    bus.ack(S, "g", ["unknown-id"])  # acking what was never stored is harmless
    assert bus.pending(S, "g") == 0
    assert bus.pending(S, "other") == 5


def test_history_and_length(bus: Bus) -> None:
    payloads = [{"n": 0, "text": "héllo"}, {"n": 1, "nested": {"a": [1, 2.5, None]}}, {}]
    for i, payload in enumerate(payloads):
        bus.publish(S, f"h{i}", payload)
    bus.publish("pairs", "p0", {"x": True})
    assert bus.history(S) == [Delivery(S, f"h{i}", p) for i, p in enumerate(payloads)]
    assert bus.history("pairs") == [Delivery("pairs", "p0", {"x": True})]
    assert bus.history("versions") == []
    assert bus.length(S) == 3
    assert bus.length("versions") == 0


def test_pointers(opener: Callable[[], Bus]) -> None:
    bus, other = opener(), opener()
    assert bus.get_pointer("attacker") is None
    bus.set_pointer("attacker", {"version": 1, "path": "/a/1"})
    assert other.get_pointer("attacker") == {"version": 1, "path": "/a/1"}
    other.set_pointer("attacker", {"version": 2})
    assert bus.get_pointer("attacker") == {"version": 2}
    assert bus.get_pointer("learner") is None


def test_block_returns_once_a_message_arrives(opener: Callable[[], Bus]) -> None:
    reader, writer = opener(), opener()
    timer = threading.Timer(0.2, writer.publish, args=(S, "late", {"n": 1}))
    start = time.monotonic()
    timer.start()
    got = reader.read(S, "g", "c", block_ms=5000)
    elapsed = time.monotonic() - start
    timer.join()
    assert ids(got) == ["late"]
    assert 0.15 <= elapsed < 2.0


def test_block_times_out_empty(bus: Bus) -> None:
    start = time.monotonic()
    assert bus.read(S, "g", "c", block_ms=300) == []
    assert 0.25 <= time.monotonic() - start < 2.0


def test_make_bus_picks_backend(tmp_path: Path, redis_url: str) -> None:
    embedded = make_bus(None, tmp_path / "bus.db")
    networked = make_bus(redis_url, tmp_path / "unused.db")
    try:
        assert isinstance(embedded, SqliteBus)
        assert isinstance(networked, RedisBus)
    finally:
        embedded.close()
        networked.close()


def test_runs_sharing_one_redis_do_not_see_each_other(tmp_path: Path, redis_url: str) -> None:
    first = make_bus(redis_url, tmp_path / "unused.db", namespace="run-a")
    second = make_bus(redis_url, tmp_path / "unused.db", namespace="run-b")
    try:
        first.publish("versions", "learner-v1", {"version": 1})
        first.set_pointer("role:learner", {"version": 1})
        assert second.length("versions") == 0 and second.get_pointer("role:learner") is None
        assert second.publish("versions", "learner-v1", {"version": 1})  # a new id there
    finally:
        first.close()
        second.close()
