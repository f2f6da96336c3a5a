"""A run's trainer that keeps dying: restarted with the reason, then given up
with one error that names the cause, the log and how to resume."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sparring.orchestrator import trainer as supervision
from sparring.orchestrator.trainer import (
    MAX_TRAINER_RESTARTS,
    TrainerGaveUp,
    TrainerProcess,
    supervise_trainer,
)
from sparring.tracing import Tracer


def test_a_trainer_that_keeps_dying_is_restarted_then_ends_the_run_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real trainer process, given a config file that is not there: it
    exits at once every time (one line, no traceback)."""
    monkeypatch.setattr(supervision, "TRAINER_CHECK_S", 0.2)
    run_dir = tmp_path / "runs" / "r-1"
    run_dir.mkdir(parents=True)
    trainer = TrainerProcess(run_dir, tmp_path / "gone.yaml", threads=1)
    tracer = Tracer(run_dir, "r-1")
    trainer.start()

    async def go() -> None:
        await asyncio.wait_for(supervise_trainer(trainer, True, asyncio.Event(), tracer), 120)

    with pytest.raises(TrainerGaveUp) as err:
        asyncio.run(go())
    tracer.close()
    message = str(err.value)
    assert f"died {MAX_TRAINER_RESTARTS + 1} times" in message
    assert "trainer.config_error" in message and "gone.yaml: no such config file" in message
    assert str(run_dir / "trainer.log") in message
    assert "resume with `sparring run --run-id r-1`" in message
    events = [json.loads(x) for x in (run_dir / "trace.jsonl").read_text().splitlines()]
    restarts = [e for e in events if e["event"] == "trainer.restarted"]
    assert [e["restarts"] for e in restarts] == list(range(1, MAX_TRAINER_RESTARTS + 1))
    assert all("no such config file" in e["last_error"] for e in restarts)
    assert [e["event"] for e in events].count("trainer.gave_up") == 1
    log = (run_dir / "trainer.log").read_text()
    assert "Traceback" not in log  # each death is one JSON line and one plain line
    assert log.count("sparring train: ") == MAX_TRAINER_RESTARTS + 1


def test_a_trainer_that_stays_up_after_a_restart_is_not_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One death (the config file appears afterwards, as a fixed cause would):
    restarted once, supervision goes on until the run stops it."""
    monkeypatch.setattr(supervision, "TRAINER_CHECK_S", 0.2)
    run_dir = tmp_path / "r-2"
    run_dir.mkdir()
    config = tmp_path / "later.yaml"
    trainer = TrainerProcess(run_dir, config, threads=1)
    tracer = Tracer(run_dir, "r-2")
    trainer.start()

    async def go() -> None:
        stop = asyncio.Event()
        watch = asyncio.create_task(supervise_trainer(trainer, True, stop, tracer))
        log = run_dir / "trainer.log"
        while not (log.is_file() and "trainer.config_error" in log.read_text()):
            await asyncio.sleep(0.05)
        config.write_text(f"bus: {{sqlite_path: {tmp_path / 'bus.sqlite'}}}\n")
        while trainer.restarts == 0:
            assert not watch.done()
            await asyncio.sleep(0.1)
        await asyncio.sleep(8.0)  # the restarted trainer loads its config and waits for pairs
        assert trainer.alive() and not watch.done()
        stop.set()
        await asyncio.wait_for(watch, 5)

    try:
        asyncio.run(go())
    finally:
        trainer.stop()
        tracer.close()
    assert trainer.restarts == 1
    events = (run_dir / "trace.jsonl").read_text()
    assert events.count('"trainer.restarted"') == 1 and "trainer.gave_up" not in events
