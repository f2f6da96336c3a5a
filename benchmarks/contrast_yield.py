"""How many contrast pairs does an episode make, with 1 or k guarded samples?

Short runs of the default profile (no training, no gate: only the episodes),
one per setting of ``loop.guarded_samples``, one after the other on this
machine, each ``--minutes`` of episodes; the same seed, so the same episodes
draw the same modes. Counts, from each run's bus: episodes, contrast records
(by mode), competence and conformity pairs, and the pairs per episode with
a Wilson interval, beside the episodes per minute (drawing k samples costs
learner time). Prints and writes JSON.

    python3 benchmarks/contrast_yield.py --samples 1 --samples 3 \\
        --out benchmarks/results/contrast_yield.json
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


def run_once(runs_dir: Path, run_id: str, samples: int, minutes: float, sets: list[str]) -> float:
    started = time.time()
    cmd = [sys.executable, "-m", "sparring", "run", "--run-id", run_id, "--no-progress"]
    fixed = [
        f"runs_dir={runs_dir}",
        f"budget.minutes={minutes}",
        "loop.refine=false",
        f"loop.guarded_samples={samples}",
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
    return {
        "episodes": len(episodes),
        "episodes_per_min": round(len(episodes) / minutes, 2),
        "contrast_episodes": dict(modes),
        "pairs": dict(kinds),
        "contrast_pairs_per_episode": {"rate": rate.rate, "lo": rate.lo, "hi": rate.hi},
        "contrast_pairs_per_min": round(made / minutes, 2),
        "guarded_samples_drawn": drawn,
        "guarded_refusal_rate": round(refusals / drawn, 3) if drawn else None,
    }, rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, action="append", default=[], help="repeatable")
    ap.add_argument("--minutes", type=float, default=8.0, help="of episodes, per run")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/contrast_yield.json"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    settings = args.samples or [1, 3]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: dict[str, Any] = {
        "benchmark": "contrast_yield",
        "minutes_of_episodes": args.minutes,
        "sets": args.sets,
        "host": {"cpus": os.cpu_count(), "fast_bf16": fast_bf16()},
        "runs": {},
    }
    rates: dict[int, Rate] = {}
    for k in settings:
        run_id = f"yield-{stamp}-k{k}"
        wall = run_once(args.runs_dir, run_id, k, args.minutes, args.sets)
        figures, rates[k] = counts(args.runs_dir / run_id, args.minutes)
        out["runs"][str(k)] = {"run_id": run_id, "wall_s": wall, **figures}
    for k in settings[1:]:
        d = difference(rates[k], rates[settings[0]])
        out["runs"][str(k)][f"pairs_per_episode_minus_k{settings[0]}"] = {
            "value": d.value,
            "lo": d.lo,
            "hi": d.hi,
        }
    write_result(out, args.out)


if __name__ == "__main__":
    main()
