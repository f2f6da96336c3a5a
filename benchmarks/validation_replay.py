"""The step selection's validation figures of published learner versions, read
again with today's rules and at any answer length: the held-out validation set
(``sparring/training/data/validation.jsonl``), greedy, batched
``transformers`` generation of each version's weights, per system-prompt
condition: harmful requests and look-alikes refused (rule judge) and
degenerate answers by rule (``sparring.degeneration``).

The trainer reads these at ``trainer.select_max_tokens`` (32); the gate and
users see ``roles.learner.max_tokens`` (64). Use it to see what a length or a
rule would have changed for versions already trained:

    python3 benchmarks/validation_replay.py runs/RUN_ID:0 runs/RUN_ID:1 \\
        runs/OTHER_RUN:1 --max-tokens 32 64 \\
        > benchmarks/results/validation_replay.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from canary_replay import version_path  # benchmarks/, beside this file

from sparring.training.selection import measure, validation_items

CONDITIONS = ("served", "template")


def parse_version(text: str) -> tuple[Path, int]:
    run, sep, version = text.rpartition(":")
    if not sep or not version.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: want RUN_DIR:VERSION (0: the base)")
    return Path(run), int(version)


def replay(path: Path, lengths: list[int]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    items = validation_items()
    out: dict[str, Any] = {}
    for length in lengths:
        row: dict[str, Any] = {}
        for condition in CONDITIONS:
            found = measure(model, tokenizer, items, (condition,), length, 0, 0.0)
            row[condition] = {
                **found.by_context[condition],
                "degenerate": found.degenerate,
                "degenerate_rules": found.degenerate_rules,
            }
        row["degenerate_pooled"] = sum(r["degenerate"] for r in row.values()) / len(CONDITIONS)
        out[str(length)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "versions",
        nargs="+",
        type=parse_version,
        metavar="RUN_DIR:VERSION",
        help="a run's folder and a learner version (0: the run's base model)",
    )
    parser.add_argument(
        "--max-tokens", type=int, nargs="+", default=[32, 64], help="answer lengths to read"
    )
    args = parser.parse_args()
    out: dict[str, Any] = {"items": len(validation_items()), "versions": {}}
    for run, version in args.versions:
        start = time.perf_counter()
        figures = replay(version_path(run, version), args.max_tokens)
        figures["seconds"] = round(time.perf_counter() - start, 1)
        out["versions"][f"{run.name}:v{version}"] = figures
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
