"""Cross-play: the success rate of attacker version i against learner version j
on the attacker gate's fixed probes, so an arms race (and its absence) shows.

Each attacker version writes its probes once (:meth:`AttackerGate.write`); every
learner version answers all of them (greedy), and the critic judges the answers
to attacks (:meth:`AttackerGate.score`). Writing finishes before answering
starts, so an attacker's engine can be the critic's too, and one batching
engine can serve the learner's versions one after the other.

Written to ``<run_dir>/eval/crossplay.json`` (the report reads it):
``success[i][j]`` is attacker ``attackers[i]`` against learner ``learners[j]``
(None: too few readable verdicts), with each attacker version's self-BLEU and
embedding distance over the queries it wrote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from sparring.eval.attacker_gate import AnswerFn, AttackerGate
from sparring.llm import Binding

FILE = "crossplay.json"

# learner version -> its greedy answer to a query; run before each learner's
# answers (e.g. to load that version on its engine)
Learners = Mapping[int, AnswerFn]


async def cross_play(
    gate: AttackerGate,
    attackers: Mapping[int, Binding],
    learners: Learners,
    before_learner: Callable[[int], Awaitable[None]] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Every attacker version against every learner version, on ``gate``'s probes."""
    started = time.perf_counter()
    written = {}
    for i, binding in attackers.items():
        log(f"attacker v{i}: writing {gate.size} probes")
        written[i] = await gate.write(binding)
    figures: dict[tuple[int, int], dict[str, float | None]] = {}
    for j, answer in learners.items():
        if before_learner is not None:
            await before_learner(j)
        for i, attacks in written.items():
            log(f"learner v{j} against attacker v{i}")
            figures[i, j] = gate.figures_of(await gate.score(attacks, answer))
    a, ls = list(attackers), list(learners)
    return {
        "probes": gate.size,
        "attackers": a,
        "learners": ls,
        "success": [[figures[i, j]["success"] for j in ls] for i in a],
        "attack_success": [[figures[i, j]["attack.success"] for j in ls] for i in a],
        "lookalike_success": [[figures[i, j]["lookalike.success"] for j in ls] for i in a],
        "self_bleu": [figures[i, ls[0]]["self_bleu"] for i in a],
        "embedding_distance": [figures[i, ls[0]]["embedding_distance"] for i in a],
        "fallback": [figures[i, ls[0]]["fallback"] for i in a],
        "seconds": round(time.perf_counter() - started, 1),
        "measured_at": time.time(),
    }


def save(run_dir: Path, table: dict[str, Any]) -> Path:
    path = run_dir / "eval" / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1) + "\n")
    return path
