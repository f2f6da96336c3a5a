"""Configs for tests: the tiny model on the session's engine process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparring.config import EngineConfig, RunConfig, parse_config


def tiny_config(
    tiny: Path,
    engine: EngineConfig,
    seq_engine: EngineConfig,
    tmp_path: Path,
    critic_model: Path | None = None,
    **over: Any,
) -> RunConfig:
    """Attacker and critic on the batching engine, the learner on the sequential one
    (as in the default profile); with a separate critic model, the critic has the
    batching engine to itself and the attacker moves to the sequential one."""
    models: dict[str, Any] = {"tiny": {"path": str(tiny)}}
    if critic_model:
        models["critic"] = {"path": str(critic_model)}
    data: dict[str, Any] = {
        "run_name": "test",
        "runs_dir": str(tmp_path / "runs"),
        "models": models,
        "engines": {
            "local": {"kind": "external", "managed": False, "port": engine.port},
            "seq": {"kind": "external", "managed": False, "port": seq_engine.port},
        },
        "roles": {
            "attacker": {
                "engine": "seq" if critic_model else "local",
                "model": "tiny",
                "max_tokens": 12,
                "temperature": 1.0,
            },
            "learner": {"engine": "seq", "model": "tiny", "max_tokens": 12},
            "critic": {"model": "critic" if critic_model else "tiny", "max_tokens": 16},
        },
        "budget": {"episodes": 4, "learner_versions": None, "minutes": 10},
        # contrast pairs and benign draws have tests of their own; the graph's
        # whole path (refinement too) unless a test turns it off
        "loop": {
            "concurrency": 4,
            "contrast": False,
            "benign_share": 0.0,
            "seed_share": 0.0,
            "refine": True,
        },
        # versions while episodes run, each trained on from the last (the tests of
        # the one-round default, trainer.final_version, set it themselves)
        "trainer": {
            "managed": False,
            "pairs_per_version": 2,
            "max_length": 64,
            "lineage": "continue",
            "final_version": False,
            "threads": 1,
            "epochs": 2,  # the last epoch: select_epoch has tests of its own
            "select_epoch": False,
        },
        # the canary gate has tests of its own; elsewhere every version goes live
        "promotion": {"gate": False},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        data.setdefault(section, {})[field] = value
    return parse_config(data, "<test>")


def trace_events(run_dir: Path) -> list[dict[str, Any]]:
    """Every event of a run's trace.jsonl, in order."""
    return [json.loads(x) for x in (run_dir / "trace.jsonl").read_text().splitlines()]


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (as docker compose reads .env)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out
