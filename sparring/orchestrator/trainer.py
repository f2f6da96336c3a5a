"""The trainer a run starts: ``sparring train`` as a background process, and
its supervision (a trainer that dies is restarted; it resumes from the bus)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from itertools import takewhile
from pathlib import Path
from typing import Any

from sparring.bus import Bus
from sparring.bus.streams import PROMOTIONS
from sparring.process import ManagedProcess
from sparring.serving.engine import thread_env
from sparring.serving.registry import Registry
from sparring.tracing import Tracer
from sparring.training.worker import final_answer, request_final

# A trainer that dies is restarted (it resumes from the bus) at most this often.
MAX_TRAINER_RESTARTS = 3
TRAINER_CHECK_S = 1.0


class TrainerGaveUp(RuntimeError):
    """The trainer died more than ``MAX_TRAINER_RESTARTS`` times: the run stops."""


def trainer_log(run_dir: Path, role: str) -> Path:
    """The JSON log of ``role``'s trainer: trainer.log for the learner."""
    return run_dir / ("trainer.log" if role == "learner" else f"trainer-{role}.log")


class TrainerProcess(ManagedProcess):
    """``sparring train`` as a background process whose JSON log is trainer.log."""

    stop_timeout_s = 20.0

    def __init__(
        self,
        run_dir: Path,
        config_path: Path,
        threads: int | None = None,
        env: dict[str, str] | None = None,
        role: str = "learner",
    ) -> None:
        """``env``: added to its environment (the secrets config.yaml masks).
        ``role``: the role it trains; the learner's log is trainer.log, another
        role's trainer-<role>.log."""
        super().__init__(trainer_log(run_dir, role))
        self.role = role
        self._env = {**os.environ, **thread_env(threads), **(env or {})}
        self._cmd = [
            sys.executable,
            "-m",
            "sparring.training.worker",
            "--run-dir",
            str(run_dir),
            "--config",
            str(config_path),
            "--exit-with-parent",  # a SIGKILLed orchestrator leaves no trainer behind
            "--role",
            role,
        ]
        self.restarts = 0  # by supervise_trainer

    def start(self) -> None:
        self.spawn(self._cmd, self._env)


async def supervise_trainer(
    trainer: TrainerProcess | None, managed: bool, stop: asyncio.Event, tracer: Tracer
) -> None:
    """Restart a trainer that died (a crash, an OOM kill): it resumes from the bus.

    Gives up after ``MAX_TRAINER_RESTARTS`` deaths; the run then stops with
    an error that points at trainer.log.
    """
    if trainer is None or not managed:
        return
    while not stop.is_set():
        await asyncio.sleep(TRAINER_CHECK_S)
        if stop.is_set() or trainer.alive():
            continue
        code, why = trainer.returncode, last_error(trainer.log_path)
        if trainer.restarts >= MAX_TRAINER_RESTARTS:
            tracer.log.error(
                "trainer.gave_up", exit_code=code, log=str(trainer.log_path), last_error=why
            )
            raise TrainerGaveUp(
                f"the trainer died {trainer.restarts + 1} times (last exit code "
                f"{code}{f': {why}' if why else ''}); see {trainer.log_path}. The pairs it "
                "had not trained stay on the bus: fix the cause, then resume with "
                f"`sparring run --run-id {trainer.log_path.parent.name}`"
            )
        trainer.restarts += 1
        tracer.log.warning(
            "trainer.restarted", exit_code=code, restarts=trainer.restarts, last_error=why
        )
        trainer.start()


def _tail_events(log_path: Path, tail_bytes: int = 64_000) -> list[dict[str, Any]]:
    """The JSON events at the end of a trainer's log, oldest first (none: no log)."""
    try:
        with log_path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # the first line, cut by the seek, or a line being written
        if isinstance(event, dict):
            events.append(event)
    return events


def last_error(log_path: Path, tail_bytes: int = 64_000) -> str | None:
    """The last error the trainer logged (its event and message), so a restart
    or a give-up says why (a full disk, a bad config) without opening the log."""
    for event in reversed(_tail_events(log_path, tail_bytes)):
        if event.get("level") in ("error", "critical"):
            detail = event.get("error") or event.get("message") or ""
            return f"{event.get('event', 'error')}: {detail}".rstrip(": ")[:300]
    return None


async def final_version(
    versions_dir: Path,
    role: str,
    bus: Bus,
    registry: Registry,
    wait_s: float,
    watch: asyncio.Task[None],
    tracer: Tracer,
    poll_s: float = 2.0,
    served: bool = True,
    stage: Callable[[str], None] | None = None,
) -> int | None:
    """The end of a run with ``trainer.final_version``: ask the trainer for a
    version on the pairs not yet trained on, then wait until it serves (the
    gate promoted it and the swapper flipped to it) or the gate rejected it;
    for a role this run does not serve (``served`` false), until it is written.
    Returns its number; None when there was nothing to train or it did not
    come within ``wait_s`` (logged).
    The trainer's supervision (``watch``) goes on meanwhile: a trainer that
    gives up ends the wait with its error. ``stage``: called with what the
    trainer is doing (:func:`trainer_stage`) whenever that changes."""
    request_final(versions_dir, role)
    tracer.log.info("run.final_version_requested", role=role, wait_s=wait_s)
    deadline = time.monotonic() + wait_s
    version: int | None = None
    log, said = trainer_log(versions_dir.parent, role), None
    while time.monotonic() < deadline:
        if watch.done():
            watch.result()  # the trainer gave up: its error ends the run
        if stage is not None and (now := trainer_stage(log)) not in (None, said):
            stage(now)
            said = now
        if version is None and (answer := final_answer(versions_dir, role)) is not None:
            version = answer.get("version")
            if version is None:
                tracer.log.info("run.final_version", role=role, version=None)
                return None
        if version is not None and (not served or _decided(bus, registry, role, version)):
            tracer.log.info("run.final_version", role=role, version=version)
            return version
        await asyncio.sleep(poll_s)
    tracer.log.warning(
        "run.final_version_timeout",
        role=role,
        version=version,
        waited_s=wait_s,
        hint="trainer.final_wait_minutes; the trainer's progress is in trainer.log",
    )
    return None


def _decided(bus: Bus, registry: Registry, role: str, version: int) -> bool:
    """Rejected by the gate, or serving (promoted and swapped in, or no gate)."""
    if registry.binding(role).version >= version:
        return True
    return any(
        d.payload.get("role") == role
        and d.payload.get("version") == version
        and not d.payload.get("promoted")
        for d in bus.history(PROMOTIONS.name)
    )


def _share(x: Any) -> str:
    return f"{x:.0%}" if isinstance(x, int | float) else "?"


MEASURED = ("train.start_measured", "train.candidate")
STAGES = ("train.start", "train.progress", "train.time_cap", *MEASURED, "train.done")


def trainer_stage(log_path: Path) -> str | None:
    """What the trainer is doing now, in a line, from the last training event
    in its log (None: none yet): training (step, epoch, time to go), the step
    search (steps measured, the last one's refusals) or the version written.
    The run shows it while it waits for the final version, which on a CPU
    can take half an hour."""
    events = [e for e in _tail_events(log_path) if e.get("event") in (*STAGES, "version.published")]
    if not events:
        return None
    last = events[-1]
    # the step the cap stopped at is reported (train.progress) after the cap
    if [e.get("event") for e in events[-2:]] == ["train.time_cap", "train.progress"]:
        last = events[-2]
    name, v = last.get("event"), last.get("version")
    if name in MEASURED:
        measured = sum(1 for _ in takewhile(lambda e: e.get("event") in MEASURED, events[::-1]))
        which = "the start" if name == "train.start_measured" else f"step {last.get('step')}"
        return (
            f"v{v}: step search, {measured} measured on the validation set ({which}: "
            f"{_share(last.get('harmful_refused'))} of the harmful requests and "
            f"{_share(last.get('lookalike_refused'))} of the look-alikes refused)"
        )
    if name == "train.start":
        return f"v{v}: training on {last.get('pairs')} pairs"
    if name == "train.progress":
        eta = last.get("eta_s")
        left = f", about {eta / 60:.0f} min to go" if isinstance(eta, int | float) else ""
        return f"v{v}: training, step {last.get('step')}/{last.get('steps')}{left}"
    if name == "train.time_cap":
        return f"v{v}: training stopped at step {last.get('step')} (trainer.max_train_minutes)"
    if name == "train.done":
        return f"v{v}: step {last.get('step')} chosen, writing the version"
    return f"v{v} written; the canary gate decides whether it serves"
