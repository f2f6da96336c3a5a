"""Prompt templates and seed data, shipped as package data."""

from __future__ import annotations

from dataclasses import dataclass
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
    category: str
    description: str
    examples: tuple[str, ...]


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
                Seed(str(item["category"]), str(item["description"]), tuple(item["examples"]))
            )
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"{where}: item {i} needs category, description and examples ({err})"
            ) from None
    return seeds


@cache
def critic_examples() -> list[dict[str, str]]:
    text = resources.files("sparring.agents").joinpath("critic_examples.yaml").read_text()
    return list(yaml.safe_load(text))
