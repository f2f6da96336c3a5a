"""Several orchestrators sharing one bus split the episodes: none runs twice,
none is lost when an orchestrator dies, a restarted one gets its own back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sparring.bus import Bus, make_bus
from sparring.workqueue import STREAM, WorkQueue


@pytest.fixture(params=["sqlite", "redis"])
def open_bus(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    opened: list[Bus] = []

    def _open() -> Bus:
        opened.append(make_bus(url, tmp_path / "bus.sqlite", namespace="run-q"))
        return opened[-1]

    yield _open
    for bus in opened:
        bus.close()


def test_replicas_racing_for_work_never_share_an_episode(open_bus) -> None:  # type: ignore[no-untyped-def]
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def orchestrator(name: str) -> None:
        try:
            queue = WorkQueue(open_bus(), "run-q", name, limit=60)
            mine = claimed.setdefault(name, [])
            start.wait(10)
            while (ep := queue.next(set())) is not None:
                mine.append(ep)
                time.sleep(0.005)  # the episode
                queue.done(ep)
        except BaseException as err:  # noqa: BLE001 - reported by the assert below
            errors.append(err)

    threads = [threading.Thread(target=orchestrator, args=(f"o{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    every = [ep for eps in claimed.values() for ep in eps]
    assert sorted(every) == [f"run-q-ep{n:05d}" for n in range(60)]  # each once, none lost
    assert sum(1 for eps in claimed.values() if eps) >= 2  # the work was really shared
    assert open_bus().length(STREAM) == 60


def test_a_restarted_orchestrator_gets_its_unfinished_episodes_back(open_bus) -> None:  # type: ignore[no-untyped-def]
    first = WorkQueue(open_bus(), "run-q", "o1")
    running = {first.next(set()) for _ in range(1)}
    running.add(first.next(running))  # type: ignore[arg-type]
    assert running == {"run-q-ep00000", "run-q-ep00001"}
    first.done("run-q-ep00000")
    # o1 is killed with ep00001 in flight; started again under its name:
    again = WorkQueue(open_bus(), "run-q", "o1")
    assert again.next(set()) == "run-q-ep00001"
    # another orchestrator does not get it while it is held
    other = WorkQueue(open_bus(), "run-q", "o2")
    assert other.next(set()) == "run-q-ep00002"


def test_episodes_of_an_orchestrator_that_never_returns_go_to_another(open_bus) -> None:  # type: ignore[no-untyped-def]
    dead = WorkQueue(open_bus(), "run-q", "o1", claim_after_s=0.2)
    assert dead.next(set()) == "run-q-ep00000"
    time.sleep(0.4)
    heir = WorkQueue(open_bus(), "run-q", "o2", claim_after_s=0.2)
    assert heir.next(set()) == "run-q-ep00000"


def test_the_episode_budget_bounds_the_tasks(open_bus) -> None:  # type: ignore[no-untyped-def]
    queue = WorkQueue(open_bus(), "run-q", "o1", limit=2)
    got = [queue.next(set()), queue.next({"run-q-ep00000"})]
    assert got == ["run-q-ep00000", "run-q-ep00001"]
    assert queue.next(set(got)) is None  # both still running here: nothing left to start
