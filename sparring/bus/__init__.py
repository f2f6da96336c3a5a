"""The message bus: one contract (:mod:`sparring.bus.base`), two backends."""

from __future__ import annotations

from pathlib import Path

from sparring.bus.base import Bus, BusError, Delivery
from sparring.bus.streams import RECORD_STREAMS, Stream

__all__ = ["ARCHIVE_DIR", "RECORD_STREAMS", "Bus", "BusError", "Delivery", "Stream", "make_bus"]

# A run's folder of Redis entries trimmed from the server (see sparring.bus.redis).
ARCHIVE_DIR = "bus-archive"


def make_bus(
    redis_url: str | None,
    sqlite_path: str | Path,
    namespace: str = "",
    *,
    keep: int | None = None,
    archive_dir: str | Path | None = None,
) -> Bus:
    """Redis when a URL is configured, else the embedded SQLite file.

    ``namespace`` (a run id) keeps runs that share one Redis server apart; the
    SQLite file is per run already. Redis only: each stream keeps its newest
    ``keep`` entries (None: all); older ones every consumer group has acked move
    to ``archive_dir/<stream>.jsonl`` (default: :data:`ARCHIVE_DIR` beside
    ``sqlite_path``, in the run directory), where ``history()`` reads them back."""
    # Imported here so the SQLite path never needs the redis client loaded.
    if redis_url:
        from sparring.bus.redis import RedisBus

        archive = Path(sqlite_path).parent / ARCHIVE_DIR if archive_dir is None else archive_dir
        prefix = f"sparring:{namespace}" if namespace else "sparring"
        return RedisBus(redis_url, prefix=prefix, keep=keep, archive_dir=archive)
    from sparring.bus.sqlite import SqliteBus

    return SqliteBus(sqlite_path)
