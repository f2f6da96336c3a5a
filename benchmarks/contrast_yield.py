"""How many contrast pairs does an episode make, with 1 or k guarded samples,
or with written refusals?

Short runs of the default profile (no training, no gate: only the episodes),
one per arm, one after the other on this machine, each ``--minutes`` of
episodes; the same seed, so the same episodes draw the same modes. An arm is
``--samples K`` (``loop.guarded_samples=K``) or ``--arm LABEL:KEY=VALUE,...``
(any settings; guarded_samples 1 unless it sets it). Counts, from each run's
bus: episodes, contrast records (by mode), competence and conformity pairs,
written refusals, and the pairs per episode with a Wilson interval, beside the
episodes per minute (drawing k samples costs learner time). Prints and writes JSON.

    python3 benchmarks/contrast_yield.py --samples 1 --samples 3 \\
        --out benchmarks/results/contrast_yield.json
    python3 benchmarks/contrast_yield.py --samples 1 --arm written:loop.written_refusals=true \\
        --out benchmarks/results/contrast_yield_written.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import run_child, write_result  # benchmarks/, beside this file

from sparring.bus import make_bus
from sparring.eval.metrics import Rate, difference, wilson
from sparring.schemas import Episode
from sparring.serving.hardware import fast_bf16


def run_once(runs_dir: Path, run_id: str, arm: list[str], minutes: float, sets: list[str]) -> float:
    started = time.time()
    cmd = [sys.executable, "-m", "sparring", "run", "--run-id", run_id, "--no-progress"]
    fixed = [
        f"runs_dir={runs_dir}",
        f"budget.minutes={minutes}",
        "loop.refine=false",
        *arm,
        "trainer.managed=false",  # no trainer: only the episodes
        "promotion.gate=false",
        *sets,
    ]
    run_child(cmd + [f"--set={s}" for s in fixed])
    return round(time.time() - started, 1)


def counts(run_dir: Path, minutes: float) -> tuple[dict[str, Any], Rate]:
    """The run's figures, and its contrast pairs per episode as a rate."""
    bus = make_bus(None, run_dir / "bus.sqlite", namespace=run_dir.name)
    try:
        episodes = [Episode.model_validate(d.payload) for d in bus.history("episodes")]
        kinds = Counter(str(d.payload.get("kind")) for d in bus.history("pairs"))
    finally:
        bus.close()
    contrast = [e.contrast for e in episodes if e.contrast is not None]
    modes = Counter("look-alike" if c.benign else "attack" for c in contrast)
    made = kinds["competence"] + kinds["conformity"]
    rate = wilson(made, len(contrast))
    drawn = sum(c.samples for c in contrast)
    refusals = sum(c.guarded_refusals or 0 for c in contrast)
    written = sum(c.written for c in contrast)
    return {
        "episodes": len(episodes),
        "episodes_per_min": round(len(episodes) / minutes, 2),
        "contrast_episodes": dict(modes),
        "pairs": dict(kinds),
        "contrast_pairs_per_episode": {"rate": rate.rate, "lo": rate.lo, "hi": rate.hi},
        "contrast_pairs_per_min": round(made / minutes, 2),
        "guarded_samples_drawn": drawn,
        "guarded_refusal_rate": round(refusals / drawn, 3) if drawn else None,
        "written_refusals": written,
    }, rate


def parse_arm(text: str) -> tuple[str, list[str]]:
    """``LABEL:KEY=VALUE,KEY=VALUE`` -> the label and its --set items."""
    label, _, sets = text.partition(":")
    items = [s for s in sets.split(",") if s]
    if not label or any("=" not in s for s in items):
        raise SystemExit(f"--arm {text!r}: want LABEL:KEY=VALUE[,KEY=VALUE]")
    return label, items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--samples", type=int, action="append", default=[], help="an arm k<K>; repeatable"
    )
    ap.add_argument(
        "--arm", action="append", default=[], metavar="LABEL:KEY=VALUE,...", help="repeatable"
    )
    ap.add_argument("--minutes", type=float, default=8.0, help="of episodes, per run")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/contrast_yield.json"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    arms = [(f"k{k}", [f"loop.guarded_samples={k}"]) for k in args.samples]
    arms += [parse_arm(a) for a in args.arm]
    arms = arms or [("k1", ["loop.guarded_samples=1"]), ("k3", ["loop.guarded_samples=3"])]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: dict[str, Any] = {
        "benchmark": "contrast_yield",
        "minutes_of_episodes": args.minutes,
        "sets": args.sets,
        "host": {"cpus": os.cpu_count(), "fast_bf16": fast_bf16()},
        "runs": {},
    }
    rates: dict[str, Rate] = {}
    for label, arm in arms:
        run_id = f"yield-{stamp}-{label}"
        wall = run_once(args.runs_dir, run_id, arm, args.minutes, args.sets)
        figures, rates[label] = counts(args.runs_dir / run_id, args.minutes)
        out["runs"][label] = {"run_id": run_id, "sets": arm, "wall_s": wall, **figures}
    first = arms[0][0]
    for label, _ in arms[1:]:
        d = difference(rates[label], rates[first])
        out["runs"][label][f"pairs_per_episode_minus_{first}"] = {
            "value": d.value,
            "lo": d.lo,
            "hi": d.hi,
        }
    write_result(out, args.out)


if __name__ == "__main__":
    main()
