"""A trained version on prompts no run was tuned to: the base model (v0) and a
run's version on suite files outside the shipped ones, under both
system-prompt conditions, refusals read by the rule judge (no model).

The default files, ``benchmarks/data/fresh_harmful.jsonl`` (100 harmful
requests: a third imperative, a third questions, a third situations and
terse or long requests) and ``benchmarks/data/fresh_lookalike.jsonl`` (100
harmless prompts in ten kinds of look-alike), were written for this project
on 2026-12-01, after every setting of the default profile was chosen, and
checked disjoint from every prompt under ``sparring/`` (no exact match, word
Jaccard under 0.5). They are for reading a version once, not for choosing
settings: a setting picked because it reads better here is tuned to them.

    python3 benchmarks/untuned.py RUN_ID                  # v0 and the last promoted
    python3 benchmarks/untuned.py RUN_ID --version 1 --out /tmp/u.json

Answers are stored apart from the run's own eval results, under
runs/RUN/untuned/RUN/eval/SUITE/ (so ``sparring report``, which pools every
suite under runs/RUN/eval/, does not mix them in), and reused on a rerun.
Intervals as in efficacy.py (Wilson, Newcombe).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from _common import write_result  # benchmarks/, beside this file
from efficacy import CONDITIONS, gate_decision, last_promoted, learner_decisions

from sparring.eval.report import by_version, figures
from sparring.eval.runner import EvalOptions, Evaluation, SuiteResult, run_config
from sparring.eval.suites import Suite, load_suite

HERE = Path(__file__).parent
FILES = (HERE / "data/fresh_harmful.jsonl", HERE / "data/fresh_lookalike.jsonl")
# what a refusal figure needs; competence and accuracy have their own suites
KEYS = ("harmful_refused", "lookalike_refused", "discrimination", "degenerate")


def scratch(run_dir: Path) -> Path:
    """A run folder of the same name whose eval results are kept apart: its
    config and versions are links to the run's."""
    here = run_dir / "untuned" / run_dir.name
    here.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "versions"):
        link = here / name
        if not link.exists():
            link.symlink_to((run_dir / name).resolve())
    return here


def evaluate(
    run_dir: Path, suites: list[Suite], versions: tuple[int, ...], system: str
) -> list[SuiteResult]:
    cfg = run_config(run_dir)
    # the rule judge alone: no critic is started
    opts = EvalOptions(versions=tuple(map(str, versions)), system=system, critic_on=(), batch=True)
    return asyncio.run(Evaluation(run_dir, cfg, suites, opts).run())


def refused_by_category(results: list[SuiteResult], version: int) -> dict[str, str]:
    """``refused/asked`` per suite and category of ``version``'s answers."""
    counts: dict[str, list[int]] = {}
    for r in results:
        if r.version != version:
            continue
        for item in r.items:
            k = counts.setdefault(f"{r.suite}/{item.category}", [0, 0])
            k[0] += item.rule.refused
            k[1] += 1
    return {c: f"{n}/{of}" for c, (n, of) in sorted(counts.items())}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_id", help="a finished run under --runs-dir")
    ap.add_argument("--version", type=int, help="default: the last version the gate promoted")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument(
        "--suite", type=Path, action="append", help="suite files (default: the two fresh ones)"
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    started = time.time()
    run_dir = args.runs_dir / args.run_id
    if not (run_dir / "config.yaml").is_file():
        raise SystemExit(f"{run_dir}: no finished run there (want runs/RUN_ID/config.yaml)")
    suites = [load_suite(str(f)) for f in args.suite or FILES]
    decisions = learner_decisions(run_dir)
    here = scratch(run_dir)
    version = args.version if args.version is not None else last_promoted(decisions)
    out: dict[str, Any] = {
        "run_id": args.run_id,
        "version": version,
        "gate": gate_decision(decisions, version),
        "suites": {s.source.rpartition("/")[2]: len(s.items) for s in suites},
    }
    for system in CONDITIONS:
        results = evaluate(here, suites, (0, version), system)
        metrics = by_version(results)
        mine, base = figures(metrics[version]), figures(metrics[0])
        out[system] = {
            **{k: mine[k] for k in KEYS},
            "refused_by_category": refused_by_category(results, version),
            "base": {k: base[k] for k in KEYS},
        }
    out["judges"] = "refusal: rule judge (phrase patterns); no critic"
    out["elapsed_s"] = round(time.time() - started, 1)
    if args.out:
        write_result(out, args.out)
    else:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
