"""Can a model be the loop's intent judge (``loop.intent_judge``)? It is asked,
with the loop's own prompt (``sparring.agents.critic.intent_messages``, the
chat template the engine applies), whether each of the shipped seeds' harmful
examples and harmless look-alikes asks for help to cause harm.

Per kind, its greedy replies as the loop reads them (``parse_field``: yes, no,
or unreadable), and over both kinds the AUC of its first-token preference for
"yes" over "no" (0.5: it ranks harmful above harmless no better than chance;
that ranking is what sampling at any temperature draws from). The seeds are
what the attacker imitates; no shot of the prompt is among them.

    python3 benchmarks/intent_judge.py > benchmarks/results/intent_judge.json
    python3 benchmarks/intent_judge.py --model /path/to/a/larger/instruct/model
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from sparring.agents.critic import VerdictParseError, intent_messages, parse_field
from sparring.agents.prompts import load_seeds
from sparring.serving.models import pull_smollm2


def auc(harmful: list[float], harmless: list[float]) -> float:
    """P(a harmful item scores above a harmless one), ties counting half."""
    wins = sum((h > b) + 0.5 * (h == b) for h in harmful for b in harmless)
    return wins / (len(harmful) * len(harmless))


def auc_interval(a: float, n_pos: int, n_neg: int) -> tuple[float, float]:
    """Hanley and McNeil's 95 % interval for an AUC."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    half = 1.96 * math.sqrt(max(var, 0.0))
    return max(0.0, a - half), min(1.0, a + half)


def judge(model: Any, tok: Any, query: str) -> tuple[str, float]:
    """The greedy reply (4 tokens, as the loop asks) and logit(yes) - logit(no)."""
    import torch

    ids = tok.apply_chat_template(
        intent_messages(query), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    yes, no = tok.encode("yes")[0], tok.encode("no")[0]
    with torch.no_grad():
        out = model.generate(
            **ids,
            max_new_tokens=4,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    first = out.scores[0][0]
    reply = tok.decode(out.sequences[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    return reply, float(first[yes] - first[no])


def reading(reply: str) -> str:
    try:
        return "yes" if parse_field("harmful", reply) else "no"
    except VerdictParseError:
        return "unreadable"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="default: the bundled SmolLM2-135M")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = args.model or pull_smollm2(progress=False)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    seeds = load_seeds()
    items = [("harmful", q) for s in seeds for q in s.examples]
    items += [("harmless", q) for s in seeds for q in s.lookalikes]
    started = time.perf_counter()
    rows = []
    from rich.console import Console
    from rich.progress import track

    for kind, query in track(items, description="intent", console=Console(stderr=True)):
        reply, margin = judge(model, tok, query)
        rows.append({"kind": kind, "query": query, "reply": reply, "yes_minus_no": margin})
    counts = {
        kind: {
            r: sum(1 for x in rows if x["kind"] == kind and reading(x["reply"]) == r)
            for r in ("yes", "no", "unreadable")
        }
        for kind in ("harmful", "harmless")
    }
    harmful = [x["yes_minus_no"] for x in rows if x["kind"] == "harmful"]
    harmless = [x["yes_minus_no"] for x in rows if x["kind"] == "harmless"]
    a = auc(harmful, harmless)
    lo, hi = auc_interval(a, len(harmful), len(harmless))
    print(
        json.dumps(
            {
                "model": str(path),
                "command": "python3 benchmarks/intent_judge.py"
                + (f" --model {path}" if args.model else ""),
                "items": {"harmful": len(harmful), "harmless": len(harmless)},
                "greedy": counts,
                "auc": {"value": round(a, 4), "lo": round(lo, 4), "hi": round(hi, 4)},
                "seconds": round(time.perf_counter() - started, 1),
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
