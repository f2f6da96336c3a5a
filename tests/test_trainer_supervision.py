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


# trainer.log of efficacy-20261202-115420's final version, cut to the events
# the run reads (one of each kind, in the order the trainer wrote them)
FINAL_LOG = [
    {"event": "trainer.started", "role": "learner"},
    {"event": "train.start", "version": 1, "pairs": 35},
    {"event": "train.progress", "version": 1, "step": 20, "steps": 72, "eta_s": 709.9},
    {"event": "train.time_cap", "version": 1, "step": 45, "steps": 72, "seconds": 608.9},
    {"event": "train.progress", "version": 1, "step": 45, "steps": 72, "eta_s": 0.0},
    {
        "event": "train.start_measured",
        "version": 1,
        "step": 0,
        "harmful_refused": 0.0,
        "lookalike_refused": 0.0208,
    },
    {
        "event": "train.candidate",
        "version": 1,
        "step": 45,
        "harmful_refused": 0.5417,
        "lookalike_refused": 0.1042,
    },
    {
        "event": "train.candidate",
        "version": 1,
        "step": 32,
        "harmful_refused": 0.4167,
        "lookalike_refused": 0.0625,
    },
    {"event": "train.done", "version": 1, "step": 32, "steps": 45},
    {"event": "version.published", "version": 1, "pairs": 35},
]
STAGES = [
    "v1: training on 35 pairs",
    "v1: training, step 20/72, about 12 min to go",
    "v1: training stopped at step 45 (trainer.max_train_minutes)",
    "v1: training stopped at step 45 (trainer.max_train_minutes)",  # its last progress line
    "v1: step search, 1 measured on the validation set (the start: 0% of the harmful "
    "requests and 2% of the look-alikes refused)",
    "v1: step search, 2 measured on the validation set (step 45: 54% of the harmful "
    "requests and 10% of the look-alikes refused)",
    "v1: step search, 3 measured on the validation set (step 32: 42% of the harmful "
    "requests and 6% of the look-alikes refused)",
    "v1: step 32 chosen, writing the version",
    "v1 written; the canary gate decides whether it serves",
]


def test_the_trainer_s_stage_is_read_from_its_log(tmp_path: Path) -> None:
    """What the run shows while the final version trains, event by event; a
    log not there yet, or a line cut by a write, is no stage."""
    log = tmp_path / "trainer.log"
    assert supervision.trainer_stage(log) is None
    log.write_text(json.dumps(FINAL_LOG[0]) + "\n")
    assert supervision.trainer_stage(log) is None
    for event, stage in zip(FINAL_LOG[1:], STAGES, strict=True):
        with log.open("a") as f:
            f.write(json.dumps(event) + "\n")
        assert supervision.trainer_stage(log) == stage
    with log.open("a") as f:
        f.write('{"event": "train.sta')  # half a line
    assert supervision.trainer_stage(log) == STAGES[-1]


def test_the_final_wait_reports_each_new_stage_once(tmp_path: Path) -> None:
    """final_version polls the trainer's log while it waits and calls
    ``stage`` with each change, the version written last. The trainer is
    stood in for by a task writing its log and answer: a real one passes
    these stages too fast, or too slowly, to test their order."""
    from sparring.bus import make_bus
    from sparring.serving.registry import Registry
    from sparring.training.worker import FINAL_DONE

    run_dir = tmp_path / "run"
    versions = run_dir / "versions"
    (versions / "learner").mkdir(parents=True)
    bus = make_bus(None, run_dir / "bus.sqlite")
    seen: list[str] = []

    async def trainer() -> None:
        for event in FINAL_LOG:
            with (run_dir / "trainer.log").open("a") as f:
                f.write(json.dumps(event) + "\n")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        (versions / "learner" / FINAL_DONE).write_text('{"version": 1}')

    async def main() -> int | None:
        watch = asyncio.create_task(asyncio.sleep(3600))
        writing = asyncio.create_task(trainer())
        try:
            return await supervision.final_version(
                versions,
                "learner",
                bus,
                Registry(bus, {}),
                30,
                watch,
                Tracer(tmp_path, "final-wait"),
                poll_s=0.01,
                served=False,
                stage=seen.append,
            )
        finally:
            await writing
            watch.cancel()

    assert asyncio.run(main()) == 1
    assert seen[-1] == STAGES[-1] and len(seen) == len(set(seen))
    assert seen == [s for s in dict.fromkeys(STAGES) if s in seen]  # in order
