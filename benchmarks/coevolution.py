"""Does co-evolution work? The co-evolution profile against a fixed attacker.

Runs ``configs/coevolve.yaml`` (the attacker trained too, in alternate rounds)
and the same profile with only the learner trained (the fixed, prompted
attacker), each for the same budget, unless ``--run-id`` / ``--baseline-run-id``
name finished runs. Then measures:

- **the attacker's lineage**: the attacker gate's figures of every attacker
  version (success against the frozen base learner, self-BLEU, embedding
  distance), from the run's ``promotions`` stream;
- **cross-play** (``sparring.eval.crossplay``): every attacker version against
  the base learner and every promoted learner version, on the gate's fixed
  probes (written to the run's ``eval/crossplay.json``, which the report shows);
- **the learners**: each run's last promoted learner on the shipped held-out
  suites (harmful refused, look-alikes refused, competence) under both
  system-prompt conditions, as ``benchmarks/efficacy.py`` measures them.

    python3 benchmarks/coevolution.py                  # both runs, then measure
    python3 benchmarks/coevolution.py --run-id A --baseline-run-id B

Prints and writes JSON (``benchmarks/results/coevolution.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from _common import run_child, write_result  # benchmarks/, beside this file
from efficacy import (  # benchmarks/, beside this file
    CONDITIONS,
    evaluate,
    last_promoted,
    learner_decisions,
    run_counts,
)

from sparring.agents import Attacker, Binding, Learner, OpenAIChat, make_critic
from sparring.agents.prompts import load_seeds
from sparring.bus import make_bus
from sparring.config import EngineConfig, RunConfig
from sparring.eval.attacker_gate import AttackerGate
from sparring.eval.crossplay import cross_play, save
from sparring.eval.diversity import minilm_embedder
from sparring.eval.report import figures
from sparring.eval.runner import run_config
from sparring.graphs.nodes import intent_judge_for
from sparring.graphs.redteam import make_attacker
from sparring.process import free_port
from sparring.schemas import PromotionDecision, VersionPublished
from sparring.serving.deploy import local_models
from sparring.serving.engine import EngineProcess
from sparring.serving.registry import warm
from sparring.tracing import Tracer


def fresh_run(run_id: str, runs_dir: Path, config: Path, sets: list[str]) -> float:
    started = time.time()
    cmd = [sys.executable, "-m", "sparring", "run", "--run-id", run_id, "--config", str(config)]
    run_child(cmd + [f"--set={s}" for s in [f"runs_dir={runs_dir}", *sets]])
    return round(time.time() - started, 1)


def lineage(run_dir: Path, role: str) -> list[dict[str, Any]]:
    """Each published version of ``role``: its record's stage and its gate's decision."""
    bus = make_bus(None, run_dir / "bus.sqlite", namespace=run_dir.name)
    try:
        published = [VersionPublished.model_validate(d.payload) for d in bus.history("versions")]
        decided = {
            p.version: p
            for d in bus.history("promotions")
            if (p := PromotionDecision.model_validate(d.payload)).role == role
        }
    finally:
        bus.close()
    rows = []
    for v in sorted((v for v in published if v.role == role), key=lambda v: v.version):
        d = decided.get(v.version)
        rows.append(
            {
                "version": v.version,
                "pairs": len(v.pair_ids),
                "stage": v.stage,
                "published_at": v.published_at,
                "promoted": None if d is None else d.promoted,
                "metrics": None if d is None else d.metrics,
                "baseline": None if d is None else d.baseline,
                "reason": None if d is None else d.reason,
            }
        )
    return rows


def attacker_outcomes(run_dir: Path) -> dict[str, Any]:
    """What the run's attacker episodes counted as (the attacker pairs' reading)."""
    from collections import Counter

    from sparring.bus.streams import EPISODES
    from sparring.training.attacker_pairs import attacker_pairs

    bus = make_bus(None, run_dir / "bus.sqlite", namespace=run_dir.name)
    try:
        episodes = EPISODES.records(bus)
    finally:
        bus.close()
    pairs, outcomes = attacker_pairs(episodes, minilm_embedder(), seeds=load_seeds())
    return {
        "written": len(outcomes),
        "requests": len({o.request for o in outcomes if o.request}),
        "outcomes": dict(Counter(f"{o.mode} {o.status}" for o in outcomes)),
        "off_topic": sum(o.reason.startswith("off-topic") for o in outcomes),
        "pairs": len(pairs),
    }


def engine(name: str, run_dir: Path) -> EngineProcess:
    cfg = EngineConfig(port=free_port(), continuous_batching=True, threads=1)
    return EngineProcess(name, cfg, run_dir / "eval" / f"engine-crossplay-{name}.log")


async def crossplay(run_dir: Path, attackers: list[int], learners: list[int]) -> dict[str, Any]:
    """The cross-play table on two batching engines: the attackers' versions
    (one after the other) and then the critic on one, the learner's versions
    one after the other on the other."""
    cfg: RunConfig = run_config(run_dir)
    models = {name: str(path) for name, path in local_models(cfg).items()}
    base = models[cfg.roles["learner"].model]
    versions = run_dir / "versions"

    def path(role: str, v: int) -> str:
        return base if v == 0 else str((versions / role / f"v{v}").resolve())

    rc, p = cfg.roles, cfg.promotion
    seeds = load_seeds()[: p.attacker.seeds]
    tracer = Tracer(run_dir / "eval", "crossplay")
    with engine("writer", run_dir) as writer, engine("learner", run_dir) as answerer:
        chat = OpenAIChat(timeout_s=600)
        learner = Learner(chat, temperature=0.0, max_tokens=rc["learner"].max_tokens)
        critic = make_critic(
            chat,
            temperature=rc["critic"].temperature,
            max_tokens=rc["critic"].max_tokens,
            retries=cfg.loop.critic_retries,
            shots=cfg.loop.critic_shots,
        )
        critic_at = Binding("critic", writer.cfg.url(), base, 0)

        def new_attacker() -> Attacker | None:  # the loop's attacker, fresh for each version
            return make_attacker(cfg, chat, seeds, None)

        async def judge(query: str, text: str) -> Any:
            return (await critic(critic_at, query, text)).critique

        # look-alike probes as the run's gate writes them: with its intent judge
        check, role = intent_judge_for(cfg, chat), cfg.loop.intent_judge
        judge_at = (
            Binding("intent", writer.cfg.url(), models.get(rc[role].model, ""), 0) if role else None
        )

        async def intent(query: str) -> Any:
            assert check is not None and judge_at is not None
            return (await check(judge_at, query)).intent

        gate = AttackerGate(
            seeds,
            new_attacker,
            learner_answer(learner, answerer.cfg.url(), path("learner", 0), 0),
            judge,
            minilm_embedder(),
            p.attacker.tolerance,
            make_bus(None, run_dir / "eval" / "crossplay-bus.sqlite"),
            tracer.log,
            samples=p.attacker.samples,
            modes=("attack", "lookalike") if cfg.loop.attacker_lookalikes else ("attack",),
            concurrency=8,
            intent=intent if check is not None else None,
        )
        answers = {
            j: learner_answer(learner, answerer.cfg.url(), path("learner", j), j) for j in learners
        }

        async def before(j: int) -> None:  # greedy: the first request fixes the sampling
            b = Binding("learner", answerer.cfg.url(), path("learner", j), j)
            await warm(chat, b, temperature=0.0)

        table = await cross_play(
            gate,
            {i: Binding("attacker", writer.cfg.url(), path("attacker", i), i) for i in attackers},
            answers,
            before,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
        await chat.aclose()
    tracer.close()
    save(run_dir, table)
    return table


def learner_answer(learner: Learner, url: str, model: str, v: int) -> Any:
    async def answer(query: str) -> str:
        return (await learner.respond(Binding("learner", url, model, v), query)).text

    return answer


def held_out(run_dir: Path, version: int, with_base: bool) -> dict[str, Any]:
    """The learner version (and the base) on the shipped held-out suites."""
    out: dict[str, Any] = {"version": version}
    for system in CONDITIONS:
        metrics = evaluate(run_dir, (0, version) if with_base else (version,), system)
        out[system] = figures(metrics[version])
        if with_base:
            out[system]["base"] = figures(metrics[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-id", help="a finished co-evolution run (default: run one now)")
    ap.add_argument("--baseline-run-id", help="a finished fixed-attacker run (default: run one)")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--config", type=Path, default=Path("configs/coevolve.yaml"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/coevolution.json"))
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to both `sparring run`s (fresh runs only)",
    )
    ap.add_argument("--skip-held-out", action="store_true", help="no held-out eval (quicker)")
    ap.add_argument(
        "--no-baseline",
        action="store_true",
        help="no fixed-attacker run: the attacker's lineage and cross-play only",
    )
    args = ap.parse_args()
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_id = args.run_id or f"coevolve-{stamp}"
    base_id = args.baseline_run_id or f"coevolve-fixed-{stamp}"
    base_id = None if args.no_baseline else base_id
    out: dict[str, Any] = {"run_id": run_id, "baseline_run_id": base_id, "run_s": {}}
    fixed = ["trainer.roles=[learner]", "trainer.coevolution=simultaneous"]
    runs = [(run_id, [])] + ([(base_id, fixed)] if base_id else [])
    for rid, extra in runs:
        if not (args.runs_dir / rid / "config.yaml").is_file():
            out["run_s"][rid] = fresh_run(rid, args.runs_dir, args.config, [*args.sets, *extra])
    run_dir = args.runs_dir / run_id
    out["counts"] = {rid: run_counts(args.runs_dir / rid) for rid, _ in runs}
    out["attacker_pairs"] = attacker_outcomes(run_dir)
    attackers = lineage(run_dir, "attacker")
    out["attacker_lineage"] = attackers
    out["learner_lineage"] = {rid: lineage(args.runs_dir / rid, "learner") for rid, _ in runs}
    promoted = [r["version"] for r in out["learner_lineage"][run_id] if r["promoted"]]
    out["crossplay"] = asyncio.run(
        crossplay(run_dir, [0, *(r["version"] for r in attackers)], [0, *promoted])
    )
    if not args.skip_held_out:
        out["held_out"] = {
            run_id: held_out(run_dir, last_promoted(learner_decisions(run_dir)), with_base=True)
        }
        if base_id:
            base_dir = args.runs_dir / base_id
            out["held_out"][base_id] = held_out(
                base_dir, last_promoted(learner_decisions(base_dir)), with_base=False
            )
    out["elapsed_s"] = round(time.time() - started, 1)
    write_result(out, args.out)


if __name__ == "__main__":
    main()
