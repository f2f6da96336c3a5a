"""What the degeneration rules (``sparring.degeneration``) say about runs already
made: the chosen answers of each run's preference pairs (what the trainer would
refuse to train) and the answers of each ``sparring eval`` file under the run
(what the eval, the canary and the report count as degenerate), by rule.

Reads the run folders only (``bus.sqlite``, ``eval/<suite>/<version>.json``);
no model. Use it after changing a rule: the counts show what the change catches
and, with ``--show``, the answers it newly names, to read for false alarms.

    python3 benchmarks/degeneration_audit.py runs/RUN_ID ... \\
        > benchmarks/results/degeneration_audit.json

(Name source runs, not scratch copies such as regularisation.py's ``<run>-reg``,
which hold the base's eval files again.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from sparring.bus import make_bus
from sparring.degeneration import degeneration


def pair_answers(run: Path) -> list[str]:
    """The chosen answers of the run's pairs, from its SQLite bus."""
    db = run / "bus.sqlite"
    if not db.exists():
        return []
    bus = make_bus(None, db, namespace=run.name)
    try:
        return [str(d.payload.get("chosen", "")) for d in bus.history("pairs")]
    finally:
        bus.close()


def eval_answers(run: Path) -> dict[str, list[str]]:
    """Each eval file's answers, keyed ``suite/version``."""
    return {
        f"{f.parent.name}/{f.stem}": [
            str(i.get("answer", "")) for i in json.loads(f.read_text())["items"]
        ]
        for f in sorted((run / "eval").glob("*/*.json"))
    }


def tally(answers: list[str], show: bool, where: str) -> dict[str, Any]:
    rules: Counter[str] = Counter()
    for answer in answers:
        if rule := degeneration(answer):
            rules[rule] += 1
            if show:
                print(f"{where}\t{rule}\t{answer[:160]!r}", file=sys.stderr)
    return {"answers": len(answers), "degenerate": sum(rules.values()), "by_rule": dict(rules)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<run_id>)")
    parser.add_argument(
        "--show", action="store_true", help="print each degenerate answer to stderr"
    )
    args = parser.parse_args()
    out: dict[str, Any] = {}
    for run in args.runs:
        if not run.is_dir():
            parser.error(f"{run}: not a run folder")
        out[run.name] = {
            "pairs_chosen": tally(pair_answers(run), args.show, f"{run.name} pairs"),
            "eval": {
                key: tally(answers, args.show, f"{run.name} {key}")
                for key, answers in eval_answers(run).items()
            },
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
