"""How often the canary gate's gain rule (``promotion.discrimination_gain``)
promotes a candidate, by how much its true discrimination rose. Exact binomial
arithmetic, no model.

A version's discrimination on the canary is H/n - L/n: H of n harmful prompts
refused, L of n look-alikes refused (one condition; greedy answers, so one
binomial draw of each per version). The gate promotes a candidate only if its
discrimination is above the reference's by more than ``gain``. For each gain
this prints the chance of promotion for candidates whose true harmful-refusal
rate is the reference's plus ``rise`` (look-alikes unchanged), treating the two
versions' draws as independent (conservative: the same prompts make them
positively correlated, which narrows the difference). ``rise`` 0 is a version
that improves nothing: its promotions are the rule's misses.

The gate averages discrimination over its conditions (served and template by
default). Each row gives one condition (``conditions`` 1: as if the two
conditions' answers were fully correlated, the gate's worst case) or two
independent ones (2: its best case); the real gate lies between.

The references by default: the base learner's canary figures under the served
prompt in efficacy-20261130-193409 (2 of 40 harmful prompts refused, none of
the look-alikes), and a version that has learnt some refusals (30 % and 5 %).

    python3 benchmarks/gain_size.py > benchmarks/results/gain_size.json
"""

from __future__ import annotations

import argparse
import json
import math


def binom(n: int, p: float) -> list[float]:
    return [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]


def discrimination(n: int, harmful: float, lookalike: float) -> dict[int, float]:
    """The distribution of H - L (refusals counted on n prompts of each kind)."""
    out: dict[int, float] = {}
    for h, ph in enumerate(binom(n, harmful)):
        for v, pl in enumerate(binom(n, lookalike)):
            out[h - v] = out.get(h - v, 0.0) + ph * pl
    return out


def summed(dist: dict[int, float], k: int) -> dict[int, float]:
    """The distribution of the sum of ``k`` independent draws of ``dist``."""
    out = {0: 1.0}
    for _ in range(k):
        nxt: dict[int, float] = {}
        for a, pa in out.items():
            for b, pb in dist.items():
                nxt[a + b] = nxt.get(a + b, 0.0) + pa * pb
        out = nxt
    return out


def promoted(n: int, ref: dict[int, float], cand: dict[int, float], gain: float) -> float:
    """P(the candidate's H - L exceeds the reference's by more than gain * n):
    ``n`` prompts of each kind in all (conditions' counts summed, so the mean's
    rule in counts)."""
    limit = gain * n + 1e-9
    return sum(pr * pc for r, pr in ref.items() for c, pc in cand.items() if c - r > limit)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=40, help="canary prompts of each kind")
    ap.add_argument(
        "--references",
        nargs="+",
        default=["0.05:0.0", "0.3:0.05"],
        help="reference versions as HARMFUL:LOOKALIKE refusal rates (default: the base "
        "learner's, and a version that has learnt some refusals)",
    )
    ap.add_argument("--rises", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.15, 0.2, 0.3])
    ap.add_argument("--gains", type=float, nargs="+", default=[0.0, 0.025, 0.05, 0.1])
    ap.add_argument(
        "--conditions",
        type=int,
        nargs="+",
        default=[1, 2],
        help="system-prompt conditions averaged, as independent draws (1: fully correlated "
        "conditions, the gate's worst case; 2: independent ones, its best)",
    )
    args = ap.parse_args()
    rows = []
    for spec in args.references:
        harmful, lookalike = (float(x) for x in spec.split(":"))
        for k in args.conditions:
            ref = summed(discrimination(args.n, harmful, lookalike), k)
            for g in args.gains:
                for r in args.rises:
                    one = discrimination(args.n, min(1.0, harmful + r), lookalike)
                    rows.append(
                        {
                            "harmful": harmful,
                            "lookalike": lookalike,
                            "conditions": k,
                            "gain": g,
                            "rise": r,
                            "promoted": round(promoted(k * args.n, ref, summed(one, k), g), 4),
                        }
                    )
    print(json.dumps({"n": args.n, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
