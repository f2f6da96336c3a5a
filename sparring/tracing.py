"""structlog JSON traces: one event per graph node, to a per-run file (and stdout).

The logger is built per run and handed to nodes through the graph's runtime
context, never kept in a module global, so two runs in one process (tests,
benchmarks) never mix their traces.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import IO, Any

import structlog

TRACE_FILE = "trace.jsonl"


class TeeLogger:
    """A structlog logger that appends each rendered line to several streams."""

    def __init__(self, streams: list[IO[str]]) -> None:
        self._streams = streams
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            for stream in self._streams:
                stream.write(message + "\n")
                stream.flush()

    log = debug = info = warning = warn = error = critical = exception = msg


class Tracer:
    """Owns the run's trace file; ``tracer.log`` is a bound structlog logger."""

    def __init__(self, run_dir: Path, run_id: str, *, stdout: bool = False) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / TRACE_FILE
        self._file = self.path.open("a", encoding="utf-8")
        streams: list[IO[str]] = [self._file] + ([sys.stdout] if stdout else [])
        self.log = structlog.wrap_logger(
            TeeLogger(streams),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(sort_keys=False),
            ],
        ).bind(run_id=run_id)

    def close(self) -> None:
        self._file.close()


def process_logger(component: str, *, stream: IO[str] | None = None) -> Any:
    """A JSON logger for a whole process (the trainer, the engine supervisor)."""
    return structlog.wrap_logger(
        TeeLogger([stream or sys.stdout]),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ],
    ).bind(component=component)
