"""What the fault suite (benchmarks/faults.py) found, kept fixed, cheaply:
one trainer per versions folder, a trainer that does not outlive the process
that started it, a full disk as one clear error with nothing half-written, and
a Redis bus that rides out a restart of redis-server (append-only file)."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from sparring.bus.redis import RedisBus
from sparring.process import free_port
from sparring.training.worker import DiskFull, disk_full_stops, exclusive, trainer_running
from tests.plugins.redis_server import stop


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def _add(self, event: str, **kw: object) -> None:
        self.events.append((event, kw))

    info = warning = error = _add


def test_a_second_trainer_waits_for_the_first_to_leave_the_versions_folder(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "learner" / ".trainer.lock"
    log = _Log()
    first = exclusive(lock, threading.Event(), log)
    assert first is not None
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(exclusive(lock, threading.Event(), log)))
    waiter.start()
    time.sleep(1.5)
    assert not got and [e for e, _ in log.events] == ["trainer.waiting"]
    first.close()  # the first trainer exits (a SIGKILL releases it the same way)
    waiter.join(5)
    assert got and got[0] is not None
    assert [e for e, _ in log.events] == ["trainer.waiting", "trainer.lock_taken"]
    stopped = threading.Event()
    stopped.set()
    assert exclusive(lock, stopped, log) is None  # stopped while waiting: no lock
    # the end of a run asks a trainer it did not start only if one holds the lock
    assert trainer_running(tmp_path, "learner")
    got[0].close()  # type: ignore[attr-defined]
    assert not trainer_running(tmp_path, "learner")
    assert not trainer_running(tmp_path, "critic")  # no lock file at all


def test_a_trainer_started_with_exit_with_parent_stops_when_its_parent_is_killed(
    tmp_path: Path,
) -> None:
    done = tmp_path / "stopped"
    child = (
        "import threading; from pathlib import Path; "
        "from sparring.training.worker import watch_parent; "
        "stop = threading.Event(); watch_parent(stop, poll_s=0.1); "
        f"stop.wait(60); Path({str(done)!r}).write_text('ok')"
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import subprocess, sys, time; "
                f"subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
            ),
        ]
    )
    time.sleep(3.0)  # the grandchild is up and watching
    assert not done.exists()
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while not done.exists():
        assert time.monotonic() < deadline, "the orphaned trainer did not stop"
        time.sleep(0.1)


def test_a_full_disk_while_writing_a_version_is_one_clear_error_and_no_partial_folder(
    tmp_path: Path,
) -> None:
    tmp = tmp_path / "learner" / ".v3.tmp"
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes(b"half")
    log = _Log()
    no_space = "no space left .* version 3 .* free some space"
    with pytest.raises(DiskFull, match=no_space), disk_full_stops(tmp, 3, log):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not tmp.exists()
    assert log.events[0][0] == "trainer.disk_full"
    tmp.mkdir()
    with pytest.raises(ValueError), disk_full_stops(tmp, 3, log):  # other errors pass through
        raise ValueError("not a disk problem")
    assert tmp.exists()


def test_the_redis_bus_rides_out_a_redis_restart_and_keeps_what_it_stored(
    tmp_path: Path,
) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH; run scripts/setup.sh to install it")
    port = free_port()
    cmd = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(tmp_path),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                client.close()
                return proc
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    procs = [start()]
    try:
        bus = RedisBus(f"redis://127.0.0.1:{port}/0", prefix="t")
        bus.publish("pairs", "p1", {"n": 1})
        assert [d.msg_id for d in bus.read("pairs", "trainer", "t1")] == ["p1"]
        procs[0].kill()  # SIGKILL, mid-run
        procs[0].wait()
        restart = threading.Timer(2.0, lambda: procs.append(start()))
        restart.start()
        assert bus.publish("pairs", "p2", {"n": 2})  # waits for the restart, no error
        restart.join()
        # the unacked p1 comes back first, then p2: nothing lost across the restart
        assert [d.msg_id for d in bus.read("pairs", "trainer", "t1")] == ["p1", "p2"]
        # a restart that lost the group (everysec's last second): made again, redelivered
        redis.Redis(port=port).xgroup_destroy("t:stream:pairs", "trainer")
        assert [d.msg_id for d in bus.read("pairs", "trainer", "t1")] == ["p1", "p2"]
        bus.close()
    finally:
        for proc in procs:
            stop(proc)
