"""Prompt templates and seed data, shipped as package data."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@cache
def template(name: str) -> str:
    return resources.files("sparring.agents").joinpath(f"prompts/{name}.txt").read_text().strip()


def render(name: str, **fields: Any) -> str:
    return template(name).format(**fields)


@dataclass(frozen=True)
class Seed:
    """A risk category: harmful ``examples`` the attacker imitates in attack mode,
    and harmless ``lookalikes`` (the same words, a safe request) it imitates in
    look-alike mode."""

    category: str
    description: str
    examples: tuple[str, ...]
    lookalikes: tuple[str, ...] = ()


def load_seeds(path: Path | None = None) -> list[Seed]:
    """The shipped risk categories, or a user's YAML file of the same shape."""
    text = (
        path.read_text()
        if path
        else resources.files("sparring.agents").joinpath("seeds.yaml").read_text()
    )
    where = str(path or "sparring/agents/seeds.yaml")
    data = yaml.safe_load(text)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{where}: expected a non-empty list of categories")
    seeds = []
    for i, item in enumerate(data):
        try:
            seeds.append(
                Seed(
                    str(item["category"]), str(item["description"]),
                    tuple(map(str, item["examples"])),
                    tuple(map(str, item.get("lookalikes") or ())),
                )
            )  # fmt: skip
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(
                f"{where}: item {i} needs category, description and examples ({err})"
            ) from None
    return seeds


@cache
def critic_examples() -> list[dict[str, str]]:
    text = resources.files("sparring.agents").joinpath("critic_examples.yaml").read_text()
    return list(yaml.safe_load(text))


@dataclass(frozen=True)
class PromptItem:
    category: str
    prompt: str
    # further columns a graph needs (debate: answer, wrong_answer)
    fields: dict[str, str] = field(default_factory=dict)


def load_prompt_set(
    path: Path | None = None, default: str = "prompt_set.jsonl", required: tuple[str, ...] = ()
) -> list[PromptItem]:
    """Prompts for graphs without an attacker: the graph's shipped set
    (``default``, package data), or a user's JSONL (``{"prompt": ..., "category":
    ...}`` per line) or CSV (columns ``prompt`` and optionally ``category``) file.
    ``required`` names further columns every row must fill."""
    import csv
    import io
    import json

    where = str(path or f"sparring/agents/{default}")
    text = (
        path.read_text()
        if path
        else resources.files("sparring.agents").joinpath(default).read_text()
    )
    rows: list[dict[str, Any]] = []
    if where.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: line {n} is not JSON ({err.msg})") from None
    items = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: row {n} is not an object with a 'prompt'")
        prompt = str(row.get("prompt") or "").strip()
        if not prompt:
            raise ValueError(f"{where}: row {n} has no 'prompt'")
        missing = [k for k in required if not str(row.get(k) or "").strip()]
        if missing:
            raise ValueError(
                f"{where}: row {n} has no {', '.join(repr(k) for k in missing)} "
                f"(this graph needs {', '.join(('prompt', *required))} in every row)"
            )
        extra = {k: str(row[k]).strip() for k in required}
        items.append(PromptItem(str(row.get("category") or "general"), prompt, extra))
    if not items:
        raise ValueError(f"{where}: no prompts")
    return items


class PromptSource:
    """Hands out prompts in a shuffled order, reshuffling after each pass."""

    def __init__(self, items: list[PromptItem], name: str, rng: Any) -> None:
        self.items = items
        self.name = name
        self._rng = rng
        self._queue: list[PromptItem] = []

    def next(self) -> PromptItem:
        if not self._queue:
            self._queue = list(self.items)
            self._rng.shuffle(self._queue)
        return self._queue.pop()
