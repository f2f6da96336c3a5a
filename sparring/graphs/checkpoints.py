"""The orchestrator's LangGraph checkpoint file (``runs/<id>/checkpoints*.sqlite``),
checked before the checkpointer opens it: a damaged one is one clear line, not a
traceback from inside an episode."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read; the message names it and what to do."""


def check_checkpoints(path: str | Path) -> None:
    """Raise :class:`CheckpointError` when ``path`` exists and SQLite cannot read
    it whole. Opened read-only, so the file stays exactly as it was; a missing
    file is a fresh start and passes."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir():
        raise CheckpointError(
            f"{path}: a folder where the orchestrator keeps its checkpoint file; move it aside"
        )
    try:
        # immutable: no -wal or -shm file is created beside it (a WAL the last
        # writer left is not read; LangGraph replays it when it opens the file)
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            problem = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        if "locked" in str(err):
            return  # another process holds it: not the file's fault
        problem = str(err)
    if problem == "ok":
        return
    raise CheckpointError(
        f"{path}: not a readable LangGraph checkpoint file ({problem}); it was left "
        "untouched: restore it from a copy, or move it aside to start this orchestrator's "
        "checkpoints afresh (its paused and unfinished episodes then start over)"
    )
