"""How far can SmolLM2-135M be taught to tell harmful from harmless requests,
and what limits it: the number of pairs, or the training settings?

Two steps, so the slow part can run where a GPU is:

    # here: the trainable pairs of finished runs, as JSONL (with their run)
    python3 benchmarks/frontier.py export target10 target11 target12 --out pairs.jsonl
    # anywhere: one version per setting, trained from the base with the loop's
    # own trainer (TRL DPO, sparring.training.dpo.train_version), then every
    # version answers the shipped harmful and look-alike suites under both
    # system-prompt conditions (greedy, the learner's served length), judged by
    # the rule judge; degenerate answers counted as `sparring eval` counts them
    python3 benchmarks/frontier.py sweep --pairs pairs.jsonl --model <smollm2 folder> \\
        --setting pairs=target11,lr=2e-3 --setting pairs=all,lr=2e-3,epochs=3

A setting's ``pairs`` is a run id (its pairs), ``all``, or a number (that many
drawn from all, seed 0). Other keys are TrainerConfig fields' short names (lr,
beta, sft, r, epochs); the rest of the trainer is the default profile's.

Answers are generated in batches with transformers (left padding) rather than
through an engine, so figures can differ from ``sparring eval``'s by a few
answers; the sweep measures the base the same way, and its first setting
repeats one that ``benchmarks/regularisation.py`` measured through the engine.
Results are written after each setting, so a cut-off sweep keeps what it did.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from regularisation import parse as parse_setting  # benchmarks/, beside this file

from sparring.agents.learner import system_text
from sparring.config import load_config
from sparring.degeneration import degeneration
from sparring.eval.canary import canary_items
from sparring.eval.metrics import Scored, compute
from sparring.eval.report import figures
from sparring.eval.suites import load_suite
from sparring.refusal import rule_judge
from sparring.schemas import PreferencePair
from sparring.training.selection import answers

SUITES = ("harmful", "benign_scary")
CONDITIONS = ("served", "template")


def export(runs: list[str], runs_dir: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    from sparring.training.worker import carried_pairs, learner_base

    rows, seen = [], set()
    for run in runs:
        base = learner_base(load_config(runs_dir / run / "config.yaml"))
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        # the trainer's own reading of a finished run (trainer.pairs_from)
        for pair in carried_pairs(runs_dir, [run], tokenizer):
            if pair.pair_id not in seen:
                seen.add(pair.pair_id)
                rows.append({"run": run, "pair": pair.model_dump(mode="json")})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(
        json.dumps(
            {"pairs": len(rows), "runs": {r: sum(x["run"] == r for x in rows) for r in runs}}
        )
    )


OWN = ("pairs=", "weight.")


def parse(setting: str) -> tuple[str, dict[str, Any], dict[str, float]]:
    """``pairs=..``, ``weight.<kind>=w`` (that kind's pairs count w times) and
    the trainer fields regularisation.py's settings name."""
    parts = setting.split(",")
    chosen = next((p.partition("=")[2] for p in parts if p.startswith("pairs=")), "all")
    weights = {
        p.partition("=")[0].removeprefix("weight."): float(p.partition("=")[2])
        for p in parts
        if p.startswith("weight.")
    }
    rest = ",".join(p for p in parts if not p.startswith(OWN))
    return chosen, parse_setting(rest) if rest else {}, weights


def select(rows: list[dict[str, Any]], chosen: str) -> list[PreferencePair]:
    if chosen.isdigit():
        rows = random.Random(0).sample(rows, min(int(chosen), len(rows)))
    elif chosen != "all":
        rows = [r for r in rows if r["run"] == chosen]
    if not rows:
        raise SystemExit(f"pairs={chosen}: no pairs")
    return [PreferencePair.model_validate(r["pair"]) for r in rows]


def answer_all(
    model_dir: Path, prompts: list[list[dict[str, str]]], max_tokens: int, batch: int
) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    model = (
        AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16).to(device).eval()
    )
    return answers(model, tok, prompts, max_tokens, batch)  # the trainer's own reading


def suite_items(suites: str) -> list[tuple[Any, str]]:
    """``eval``: the shipped harmful and look-alike eval suites; ``canary``: the
    gate's own harmful and look-alike prompts (held out of the eval suites, so
    a choice made on them is not a choice made on the figures reported)."""
    if suites == "canary":
        return [(it, "canary") for it in canary_items(None, per_kind=1000, competence=0)]
    return [(item, suite) for suite in SUITES for item in load_suite(suite).items]


def measure(model_dir: Path, max_tokens: int, batch: int, suites: str = "eval") -> dict[str, Any]:
    items = suite_items(suites)
    result: dict[str, Any] = {}
    for condition in CONDITIONS:
        system = system_text(condition)
        head = [{"role": "system", "content": system}] if system is not None else []
        prompts = [[*head, {"role": "user", "content": it.prompt}] for it, _ in items]
        answers = answer_all(model_dir, prompts, max_tokens, batch)
        scored = [
            Scored(it.expect, rule_judge(a).refused, None, None, degeneration(a) is not None, False)
            for (it, _), a in zip(items, answers, strict=True)
        ]
        figs = figures(compute(scored))
        del figs["competence"], figs["judge_errors"]
        figs["examples"] = [
            {"suite": s, "prompt": it.prompt, "answer": a}
            for (it, s), a in list(zip(items, answers, strict=True))[:: len(items) // 6]
        ]
        result[condition] = figs
    return result


def brief(figs: dict[str, Any]) -> dict[str, list[float]]:
    return {
        c: [round(figs[c][k]["value"], 3) for k in ("harmful_refused", "lookalike_refused")]
        for c in CONDITIONS
    }


def sweep(args: argparse.Namespace) -> None:
    from sparring.training.dpo import train_version

    cfg = load_config(args.config)
    max_tokens = cfg.roles["learner"].max_tokens
    rows = [json.loads(line) for line in args.pairs.read_text().splitlines() if line.strip()]
    out: dict[str, Any] = {"pairs_available": len(rows), "max_tokens": max_tokens, "settings": []}

    def save() -> None:
        args.out.write_text(json.dumps(out, indent=1) + "\n")

    started = time.perf_counter()
    out["suites"] = args.suites
    out["base"] = measure(args.model, max_tokens, args.batch, args.suites)
    out["base_eval_s"] = round(time.perf_counter() - started, 1)
    save()
    print(json.dumps({"setting": "base", "refused harmful, look-alike": brief(out["base"])}))
    for setting in args.setting:
        chosen, update, weights = parse(setting)
        pairs = [
            p.model_copy(update={"weight": p.weight * weights.get(p.kind, 1.0)})
            for p in select(rows, chosen)
        ]
        tcfg = cfg.trainer.model_copy(update={"bf16": args.bf16, **update})
        vdir = args.scratch / "v"
        shutil.rmtree(vdir, ignore_errors=True)
        t0 = time.perf_counter()
        trained = train_version(args.model, pairs, vdir, tcfg, seed=0)
        t1 = time.perf_counter()
        row = {
            "setting": setting,
            "pairs": len(pairs),
            "pair_kinds": {
                k: sum(p.kind == k for p in pairs) for k in sorted({p.kind for p in pairs})
            },
            "steps": trained.steps,
            "step": trained.step,  # the step the trainer's selection published (None: the last)
            "selection": list(trained.selection),
            "selection_start": trained.selection_start,  # select_degenerate's reference
            "train_loss": trained.loss,
            "train_s": round(t1 - t0, 1),
            **measure(vdir, max_tokens, args.batch, args.suites),
            "eval_s": round(time.perf_counter() - t1, 1),
        }
        out["settings"].append(row)
        save()
        print(json.dumps({"setting": setting, "refused harmful, look-alike": brief(row)}))
    print(json.dumps({"settings": len(out["settings"]), "out": str(args.out)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write finished runs' trainable pairs as JSONL")
    ex.add_argument("runs", nargs="+")
    ex.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ex.add_argument("--out", type=Path, required=True)
    sw = sub.add_parser("sweep", help="train one version per setting and measure each")
    sw.add_argument("--pairs", type=Path, required=True)
    sw.add_argument("--model", type=Path, required=True, help="the base model folder")
    sw.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    sw.add_argument("--setting", action="append", required=True)
    sw.add_argument(
        "--bf16", action="store_true", help="train in bf16 (default: fp32, as on a CPU)"
    )
    sw.add_argument("--batch", type=int, default=96, help="answers generated at once")
    sw.add_argument(
        "--suites",
        choices=("eval", "canary"),
        default="eval",
        help="measure on the eval suites, or on the gate's canary prompts (to choose a setting)",
    )
    sw.add_argument("--scratch", type=Path, default=Path("/tmp/frontier"))
    sw.add_argument("--out", type=Path, default=Path("benchmarks/results/frontier.json"))
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.runs, args.runs_dir, args.out)
    else:
        sweep(args)


if __name__ == "__main__":
    sys.exit(main())
