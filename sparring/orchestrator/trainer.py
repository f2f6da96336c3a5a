"""The trainer a run starts: ``sparring train`` as a background process, and
its supervision (a trainer that dies is restarted; it resumes from the bus)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from sparring.process import ManagedProcess
from sparring.serving.engine import thread_env
from sparring.tracing import Tracer

# A trainer that dies is restarted (it resumes from the bus) at most this often.
MAX_TRAINER_RESTARTS = 3
TRAINER_CHECK_S = 1.0


class TrainerProcess(ManagedProcess):
    """``sparring train`` as a background process whose JSON log is trainer.log."""

    stop_timeout_s = 20.0

    def __init__(
        self,
        run_dir: Path,
        config_path: Path,
        threads: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env``: added to its environment (the secrets config.yaml masks)."""
        super().__init__(run_dir / "trainer.log")
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
            raise RuntimeError(
                f"the trainer died {trainer.restarts + 1} times (last exit code "
                f"{code}{f': {why}' if why else ''}); see {trainer.log_path}"
            )
        trainer.restarts += 1
        tracer.log.warning(
            "trainer.restarted", exit_code=code, restarts=trainer.restarts, last_error=why
        )
        trainer.start()


def last_error(log_path: Path, tail_bytes: int = 64_000) -> str | None:
    """The last error the trainer logged (its event and message), so a restart
    or a give-up says why (a full disk, a bad config) without opening the log."""
    try:
        with log_path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("level") in ("error", "critical"):
            detail = event.get("error") or event.get("message") or ""
            return f"{event.get('event', 'error')}: {detail}".rstrip(": ")[:300]
    return None
