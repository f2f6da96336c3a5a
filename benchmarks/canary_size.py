"""How many look-alike prompts the canary needs to catch a 15-point rise in
over-refusal, and with which tolerance. Exact binomial arithmetic, no model.

The gate compares a candidate's over-refusal on n canary look-alikes with a
reference version's on the same n (greedy answers: each version's figure is
one binomial draw). It rejects when the candidate refuses more than
``tolerance * n`` more of them. For each n and tolerance this prints the false
alarm rate (no true change, rejected anyway) and the power (a true rise of
``rise``, rejected), treating the two draws as independent (conservative: the
same prompts make them positively correlated, which narrows the difference).

    python3 benchmarks/canary_size.py > benchmarks/results/canary_size.json
"""

from __future__ import annotations

import argparse
import json
import math


def binom(n: int, p: float) -> list[float]:
    return [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]


def flagged(n: int, p_ref: float, p_cand: float, tolerance: float) -> float:
    """P(candidate refuses more than tolerance*n more prompts than the reference)."""
    ref, cand = binom(n, p_ref), binom(n, p_cand)
    limit = tolerance * n + 1e-9
    return sum(pr * pc for r, pr in enumerate(ref) for c, pc in enumerate(cand) if c - r > limit)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=float, default=0.10, help="the reference's over-refusal")
    ap.add_argument("--rise", type=float, default=0.15, help="the rise the gate must catch")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 24, 32, 40, 48])
    ap.add_argument("--tolerances", type=float, nargs="+", default=[0.05, 0.075, 0.1, 0.15])
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        for t in args.tolerances:
            rows.append(
                {
                    "n": n,
                    "tolerance": t,
                    "false_alarm": round(flagged(n, args.base, args.base, t), 4),
                    "power": round(flagged(n, args.base, args.base + args.rise, t), 4),
                }
            )
    print(json.dumps({"base": args.base, "rise": args.rise, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
