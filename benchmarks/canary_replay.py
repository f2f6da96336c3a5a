"""The canary's refusal and degeneration figures of a run's learner versions,
read again with today's rules: the shipped canary prompts (the gate's first
``--per-kind`` harmful prompts and look-alikes), greedy, at the served length,
under each system-prompt condition (harmful and look-alike prompts only: the
gate's served figure also counts its competence prompts), and its accuracy
(``--answers`` questions with reference answers, served, as the gate asks
them), answered by batched ``transformers``
generation of each version's published weights (the gate asks the serving
engine instead: the same weights and greedy decoding, unbatched, so a few
answers may differ). Competence needs the critic and is not measured here.

Use it after changing a rule (``sparring.degeneration``, the rule judge) to see
what the gate would have decided on a finished run's versions:

    python3 benchmarks/canary_replay.py runs/RUN_ID --versions 0 1 \\
        > benchmarks/results/canary_replay.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sparring.agents.learner import request, system_text
from sparring.config import load_config
from sparring.degeneration import degeneration
from sparring.eval.canary import canary_items
from sparring.eval.judges import rule_judge
from sparring.eval.suites import correct
from sparring.training.selection import answers
from sparring.training.worker import learner_base


def version_path(run: Path, version: int) -> Path:
    if version == 0:
        return Path(learner_base(load_config(run / "config.yaml")))
    path = run / "versions" / "learner" / f"v{version}"
    if not any(path.glob("*.safetensors")):
        raise SystemExit(
            f"{path}: no published weights (was the version written with publish: merged?)"
        )
    return path


def measure(
    path: Path,
    canary: Path | None,
    per_kind: int,
    max_tokens: int,
    conditions: list[str],
    questions: int = 0,
) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    items = [i for i in canary_items(canary, per_kind, 0) if i.expect in ("refuse", "help")]
    out: dict[str, Any] = {}
    for condition in conditions:
        system = system_text("served" if condition == "served" else "template")
        said = answers(model, tokenizer, [request(i.prompt, system) for i in items], max_tokens)
        refused = Counter()
        count = Counter()
        rules: Counter[str] = Counter()
        for item, answer in zip(items, said, strict=True):
            count[item.expect] += 1
            refused[item.expect] += rule_judge(answer).refused
            if rule := degeneration(answer):
                rules[f"{item.expect}/{rule}"] += 1
        out[condition] = {
            "attack_success": 1 - refused["refuse"] / count["refuse"],
            "over_refusal": refused["help"] / count["help"],
            "degenerate": sum(rules.values()) / len(items),
            "degenerate_by_kind_and_rule": dict(sorted(rules.items())),
            "prompts": len(items),
        }
    asked = [i for i in canary_items(canary, 0, 0, questions) if i.expect == "answer"]
    if asked:  # served and scored as the gate asks and scores them
        said = answers(
            model, tokenizer, [request(i.prompt, system_text("served")) for i in asked], max_tokens
        )
        right = [
            correct(i, a, degeneration(a) is not None) for i, a in zip(asked, said, strict=True)
        ]
        served = out.setdefault("served", {})
        served["accuracy"] = sum(right) / len(right)
        served["questions"] = len(right)
        served["correct"] = [i.prompt for i, r in zip(asked, right, strict=True) if r]
        served["answers"] = {i.prompt: a for i, a in zip(asked, said, strict=True)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a finished run's folder (runs/RUN_ID)")
    parser.add_argument(
        "--versions", type=int, nargs="+", default=[0, 1], help="learner versions (0: the base)"
    )
    parser.add_argument(
        "--per-kind", type=int, default=None, help="default: the run's promotion.canary_per_kind"
    )
    parser.add_argument(
        "--answers",
        type=int,
        default=None,
        help="canary questions for accuracy (default: promotion.canary_answers, "
        "today's default where the run's config predates it)",
    )
    args = parser.parse_args()
    cfg = load_config(args.run / "config.yaml")
    per_kind = args.per_kind or cfg.promotion.canary_per_kind
    questions = cfg.promotion.canary_answers if args.answers is None else args.answers
    max_tokens = cfg.promotion.max_tokens or cfg.roles["learner"].max_tokens
    result: dict[str, Any] = {
        "run": args.run.name,
        "per_kind": per_kind,
        "max_tokens": max_tokens,
        "answers": questions,
        "versions": {},
    }
    for v in args.versions:
        start = time.perf_counter()
        result["versions"][f"v{v}"] = measure(
            version_path(args.run, v),
            cfg.promotion.canary,
            per_kind,
            max_tokens,
            list(cfg.promotion.conditions),
            questions,
        )
        result["versions"][f"v{v}"]["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
