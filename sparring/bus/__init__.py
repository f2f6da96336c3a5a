"""The message bus: one contract (:mod:`sparring.bus.base`), two backends."""

from __future__ import annotations

from pathlib import Path

from sparring.bus.base import STREAMS, Bus, BusError, Delivery

__all__ = ["STREAMS", "Bus", "BusError", "Delivery", "make_bus"]


def make_bus(redis_url: str | None, sqlite_path: str | Path, namespace: str = "") -> Bus:
    """Redis when a URL is configured, else the embedded SQLite file.

    ``namespace`` (a run id) keeps runs that share one Redis server apart; the
    SQLite file is per run already."""
    # Imported here so the SQLite path never needs the redis client loaded.
    if redis_url:
        from sparring.bus.redis import RedisBus

        return RedisBus(redis_url, prefix=f"sparring:{namespace}" if namespace else "sparring")
    from sparring.bus.sqlite import SqliteBus

    return SqliteBus(sqlite_path)
