"""Does the loop make the learner better? One command that measures it.

Runs the default profile end to end (``sparring run``, about 30 minutes on a CPU)
unless ``--run-id`` names a finished run, then evaluates the base model (v0)
and the last version the canary gate promoted on the shipped held-out suites
(harmful requests, benign look-alikes, ordinary tasks, questions with reference
answers), under both system-prompt
conditions: ``served`` (the loop's learner_system.txt) and ``template`` (no
system message: the chat template's default, what users who send none get).
Refusals are read by the rule judge (no model); competence by the run's critic;
accuracy (questions answered with a reference answer) by whole-word matching.
Prints and writes JSON:

    python3 benchmarks/efficacy.py                       # a fresh default run, then eval
    python3 benchmarks/efficacy.py --run-id target10     # an existing run
    python3 benchmarks/efficacy.py --run-id X --version 7 --out /tmp/e.json

With ``--run-id``, answers already stored under the same setup are reused, and
``run_s`` (the run's wall time) is kept from an earlier result for the same run
at ``--out``. Each figure has its 95% interval (Wilson for rates, Newcombe for the
discrimination, a seeded bootstrap for competence).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import run_child, write_result  # benchmarks/, beside this file

from sparring.bus import make_bus
from sparring.eval.metrics import Metrics
from sparring.eval.report import by_version, figures
from sparring.eval.runner import EvalOptions, Evaluation, run_config
from sparring.eval.suites import SHIPPED, load_suite
from sparring.schemas import PromotionDecision
from sparring.serving.hardware import fast_bf16

CONDITIONS = ("served", "template")


def learner_decisions(run_dir: Path) -> list[PromotionDecision]:
    """The canary gate's decisions on the run's learner versions."""
    bus = make_bus(None, run_dir / "bus.sqlite", namespace=run_dir.name)
    try:
        decisions = [PromotionDecision.model_validate(d.payload) for d in bus.history("promotions")]
    finally:
        bus.close()
    return [d for d in decisions if d.role == "learner"]


def last_promoted(decisions: list[PromotionDecision]) -> int:
    """The newest version the canary gate promoted (0: none was)."""
    return max((d.version for d in decisions if d.promoted), default=0)


def gate_decision(decisions: list[PromotionDecision], version: int) -> str:
    """What the canary gate decided on ``version``: promoted, rejected, or not
    gated (e.g. the run's final wait ran out before it)."""
    if version == 0:
        return "base"
    for d in decisions:
        if d.version == version:
            return "promoted" if d.promoted else "rejected"
    return "not gated"


def run_counts(run_dir: Path) -> dict[str, int]:
    """What the run produced: episodes, preference pairs, trained versions."""
    bus = make_bus(None, run_dir / "bus.sqlite", namespace=run_dir.name)
    try:
        return {
            "episodes": len(bus.history("episodes")),
            "pairs": len(bus.history("pairs")),
            "versions": len(bus.history("versions")),
        }
    finally:
        bus.close()


def evaluate(run_dir: Path, versions: tuple[int, ...], system: str) -> dict[int, Metrics]:
    """``versions`` of the run's learner on the shipped suites under ``system``."""
    cfg = run_config(run_dir)
    suites = [load_suite(name) for name in SHIPPED]
    wanted = tuple(str(v) for v in versions)
    opts = EvalOptions(versions=wanted, system=system, critic_on=("competence",), batch=True)
    results = asyncio.run(Evaluation(run_dir, cfg, suites, opts).run())
    return by_version(results)


def earlier_run_s(out: Path, run_id: str) -> float | None:
    """The run's wall time from an earlier result for the same run at ``out``."""
    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(earlier, dict) or earlier.get("run_id") != run_id:
        return None
    run_s = earlier.get("run_s")
    return float(run_s) if isinstance(run_s, int | float) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-id", help="a finished run under --runs-dir (default: run one now)")
    ap.add_argument("--version", type=int, help="the version to measure (default: last promoted)")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/efficacy.json"))
    ap.add_argument(
        "--config",
        type=Path,
        default=None,
        help="passed to `sparring run` (a fresh run only; default: the default profile)",
    )
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to `sparring run` (a fresh run only)",
    )
    args = ap.parse_args()
    started = time.time()
    run_id = args.run_id or time.strftime("efficacy-%Y%m%d-%H%M%S")
    run_dir = args.runs_dir / run_id
    if not (run_dir / "config.yaml").is_file():
        sets = [f"runs_dir={args.runs_dir}", *args.sets]
        cmd = [sys.executable, "-m", "sparring", "run", "--run-id", run_id]
        if args.config:
            cmd += ["--config", str(args.config)]
        run_child(cmd + [f"--set={s}" for s in sets])
        run_s: float | None = round(time.time() - started, 1)
    else:  # measured when it ran, if this file holds that measurement (an eval redone)
        run_s = earlier_run_s(args.out, run_id)
    decisions = learner_decisions(run_dir)
    version = args.version if args.version is not None else last_promoted(decisions)
    out: dict[str, Any] = {
        "run_id": run_id,
        "version": version,
        "gate": gate_decision(decisions, version),
        "base_version": 0,
        "suites": {n: len(load_suite(n).items) for n in SHIPPED},
        "run_s": run_s,  # the run's wall time, start-up and final version included
        **run_counts(run_dir),
    }
    for system in CONDITIONS:
        metrics = evaluate(run_dir, (0, version), system)
        out[system] = {**figures(metrics[version]), "base": figures(metrics[0])}
    out["judges"] = (
        "refusal: rule judge (phrase patterns); competence: the run's critic; "
        "accuracy: reference answers matched as whole words"
    )
    cfg = run_config(run_dir)
    engine = cfg.engines[cfg.roles["learner"].engine]
    out["learner_engine"] = f"{engine.kind} ({engine.swap_mode()} swap), greedy, batched"
    # the same budget gives a fifth of the pairs on a host without bf16 (shared/DESIGN.md)
    out["host"] = {"cpus": os.cpu_count(), "fast_bf16": fast_bf16()}
    out["elapsed_s"] = round(time.time() - started, 1)
    write_result(out, args.out)


if __name__ == "__main__":
    main()
