"""Graph variants. Each is a short module with ``build(checkpointer) -> compiled graph``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sparring.graphs import redteam

GRAPHS: dict[str, Callable[..., Any]] = {"redteam": redteam.build}


def build_graph(name: str, checkpointer: Any = None) -> Any:
    if name not in GRAPHS:
        raise KeyError(f"unknown graph '{name}'; known graphs: {', '.join(sorted(GRAPHS))}")
    return GRAPHS[name](checkpointer)
