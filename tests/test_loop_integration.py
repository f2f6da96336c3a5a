"""The whole loop with every real part: engine, graph, bus, background trainer, hot swap.

The attacker and the learner are the tiny random model (so DPO and version
loads take seconds); the critic is the bundled SmolLM2, because a random model
never writes a readable verdict and so would never yield a pair. Mid-run the
trainer is SIGKILLed while it trains; the runner restarts it and it must
resume from the bus without losing or duplicating a pair. Every version goes
through the canary gate before its hot swap (tolerances at their widest, so
every decision is a promotion whatever the tiny model says; the gate's
rejections are tested on the Swapper in test_promotion).
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sparring.bus import make_bus
from sparring.config import EngineConfig
from sparring.orchestrator import Loop
from sparring.schemas import Episode, PreferencePair, PromotionDecision
from sparring.summary import summarise
from sparring.training.worker import GROUP, STREAM, complete_versions, final_answer
from tests.helpers import tiny_config

pytestmark = pytest.mark.slow


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


async def _kill_trainer_mid_training(loop: Loop, run_dir: Path, seen: dict[str, Any]) -> None:
    """SIGKILL the trainer as soon as it logs the start of its first training."""
    log = run_dir / "trainer.log"
    while True:
        await asyncio.sleep(0.02)
        if loop.trainer is None or not log.is_file():
            continue
        starts = [e for e in _events(log) if e.get("event") == "train.start"]
        if starts:
            version = starts[0]["version"]
            loop.trainer.kill()
            learner_dir = run_dir / "versions" / "learner"
            seen.update(
                version=version,
                final_existed=(learner_dir / f"v{version}").exists(),
                partial_existed=(learner_dir / f".v{version}.tmp").exists(),
            )
            return


def test_full_loop_gates_and_hot_swaps_versions_and_survives_a_killed_trainer(
    tiny_model_path: Path,
    smollm2_path: Path,
    engine: EngineConfig,
    seq_engine: EngineConfig,
    tmp_path: Path,
) -> None:
    cfg = tiny_config(
        tiny_model_path,
        engine,
        seq_engine,
        tmp_path,
        critic_model=smollm2_path,
        budget__episodes=None,
        budget__learner_versions=2,
        budget__minutes=12,
        loop__concurrency=6,
        loop__pair_margin=0,
        trainer__managed=True,
        trainer__pairs_per_version=2,
        trainer__bf16=False,
        trainer__learning_rate=1e-3,
        trainer__poll_s=0.2,
        trainer__final_version=True,  # the pairs left when the budget ends
        trainer__final_wait_minutes=5,
        promotion__gate=True,
        promotion__canary_per_kind=1,
        promotion__canary_competence=1,
        promotion__canary_answers=1,
        # the tiny model's versions are gated, not judged on merit: any figure passes
        promotion__discrimination_gain=None,
        promotion__tolerance={
            "attack_success": 1,
            "over_refusal": 1,
            "competence": 9,
            "degenerate": 1,
            "accuracy": 1,
        },
    )
    run_dir = tmp_path / "runs" / "it"
    out = io.StringIO()
    loop = Loop(cfg, run_dir, console=Console(file=out, width=120), progress=True)
    killed: dict[str, Any] = {}

    async def go() -> None:
        killer = asyncio.create_task(_kill_trainer_mid_training(loop, run_dir, killed))
        try:
            await loop.run()
        finally:
            killer.cancel()

    asyncio.run(go())

    bus = make_bus(None, run_dir / "bus.sqlite")
    episode_list = [Episode.model_validate(d.payload) for d in bus.history("episodes")]
    episodes = {e.episode_id: e for e in episode_list}
    pair_list = [PreferencePair.model_validate(d.payload) for d in bus.history(STREAM)]
    pairs = {p.pair_id: p for p in pair_list}
    events = _events(run_dir / "trace.jsonl")
    versions = complete_versions(run_dir / "versions", "learner")

    # -- the kill happened mid-training, and the runner restarted the trainer --
    assert killed, "the trainer never started training"
    assert killed["partial_existed"] and not killed["final_existed"], killed
    assert any(e.get("event") == "trainer.restarted" for e in events)
    trainer_log = _events(run_dir / "trainer.log")
    assert sum(e.get("event") == "trainer.started" for e in trainer_log) >= 2
    assert killed["version"] in versions  # the interrupted version was trained after all

    # -- each version passed the gate before its swap ---------------------------
    # versions in order (one the trainer superseded before the gate reached it
    # is skipped), each against the one serving before it
    decisions = [PromotionDecision.model_validate(d.payload) for d in bus.history("promotions")]
    assert decisions and all(d.promoted for d in decisions)
    gated = [0, *(d.version for d in decisions)]
    against = list(zip(gated[1:], gated[:-1], strict=True))
    assert [(d.version, d.against) for d in decisions] == against
    names = [(e.get("event"), e.get("version")) for e in events]
    for d in decisions:
        assert d.canary_prompts == 4
        for figures in (d.metrics, d.baseline):  # both versions measured on the canary
            assert figures["attack_success"] in (0.0, 1.0)
            assert figures["over_refusal"] in (0.0, 1.0)
            assert figures["accuracy"] in (0.0, 1.0)
        if ("swap.flipped", d.version) in names:
            assert names.index(("swap.promoted", d.version)) < names.index(
                ("swap.flipped", d.version)
            )
    assert not list((run_dir / "versions" / "learner").glob("v*/rejected.json"))

    # -- hot swap mid-run: episodes ran on v0, then on v2 or later, same engine --
    assert {1, 2} <= set(versions)
    flips = [e for e in events if e.get("event") == "swap.flipped"]
    flipped = [e["version"] for e in flips]
    assert flipped == sorted(set(flipped)) and set(flipped) <= set(gated[1:]), flipped
    by_version: dict[int, int] = {}
    for e in events:
        if e.get("node") == "emit":
            by_version[e["learner_version"]] = by_version.get(e["learner_version"], 0) + 1
    # v0 served, and so did the budget's v2 or a later one. v1 may serve nothing:
    # pairs pile up while the trainer restarts, and v2 can replace v1 within a
    # second or two, before any episode starts (the newest version serves).
    served = {v for v, n in by_version.items() if n}
    assert 0 in served and max(served) >= 2, by_version
    assert sum(by_version.values()) == len(episodes)
    first_flip = min(e["ts"] for e in flips)
    assert any(
        e["ts"] > first_flip and e.get("node") == "attack" and e["learner_version"] >= 1
        for e in events
    ), "no episode started after the first flip: the swap was not mid-run"

    # -- every node of every episode left one trace event, in graph order -------
    for ep in episodes.values():
        nodes = [e["node"] for e in events if e.get("episode_id") == ep.episode_id]
        middle = [] if ep.outcome == "judge_error" else ["refine", "critique_refined"]
        assert nodes == ["attack", "respond", "critique", *middle, "emit"], ep.episode_id
        node_events = [e for e in events if e.get("episode_id") == ep.episode_id]
        assert all(e["run_id"] == "it" for e in node_events)
        assert all(e["learner_version"] == ep.learner.version for e in node_events)

    # -- the pairs trained on carry their provenance ----------------------------
    trained = [pid for m in versions.values() for pid in m.pair_ids]
    assert trained
    for pid in trained:
        pair = pairs[pid]
        ep = episodes[pair.episode_id]
        assert pair.critique and pair.critique == ep.critique.text
        assert pair.rejected_verdict == ep.critique.verdict
        assert ep.refined_critique is not None
        assert pair.chosen_verdict == ep.refined_critique.verdict
        assert pair.chosen_by.version == pair.rejected_by.version == ep.learner.version
        assert (pair.prompt, pair.rejected, pair.chosen) == (
            ep.query,
            ep.answer,
            ep.refined_answer,
        )
        assert ep.outcome != "judge_error"
    # Versions are trained in order, each on the one before; the final one (when
    # the budget ended) on every pair left, gated before the run stopped.
    final = final_answer(run_dir / "versions", "learner")
    assert final is not None, "the run did not wait for its final version"
    assert ("run.final_version", final["version"]) in names
    for n, m in versions.items():
        assert m.base_version == n - 1
        assert len(m.pair_ids) == 2 or (n == final["version"] and m.pair_ids)
    if final["version"] is not None:
        assert final["version"] == max(versions) and final["version"] in gated

    # -- nothing lost, nothing trained twice ------------------------------------
    assert len(trained) == len(set(trained)), "a pair was trained into two versions"
    untrained = set(pairs) - set(trained)
    assert bus.pending(STREAM, GROUP) == len(untrained), "a pair was acked but never trained"

    # -- the user saw progress and the summary has every version ----------------
    assert "learner version" in out.getvalue()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {row["version"] for row in summary} >= {0, 1, 2}
    rows = {r.version: r for r in summarise(bus)}
    assert all(rows[d.version].gate == "promoted" for d in decisions)
