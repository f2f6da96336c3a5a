"""The attacker gate: a new attacker version is promoted only if, on fixed
probes against a frozen learner, it succeeds about as often as the serving
attacker and its queries have not collapsed (issue 15, deliverable 3)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sparring.agents import Attacker, Binding, Learner, OpenAIChat
from sparring.agents.critic import make_intent_judge
from sparring.agents.prompts import load_seeds
from sparring.bus import make_bus
from sparring.config import AttackerToleranceConfig, EngineConfig, load_config
from sparring.eval.attacker_gate import ATTACKER, AttackerGate
from sparring.eval.canary import CanaryGate, canary_items
from sparring.eval.diversity import minilm_embedder
from sparring.eval.gate import decide
from sparring.schemas import Intent, PromotionDecision
from sparring.serving.registry import Registry, Swapper
from sparring.tracing import Tracer
from tests.helpers import trace_events
from tests.test_promotion import TOL, _mute_model, _same_weights, swap_mute_then_twin

ATOL = AttackerToleranceConfig(success=0.125, self_bleu=0.15, embedding_distance=0.15)


def test_an_attacker_that_succeeds_less_or_repeats_itself_is_rejected() -> None:
    base = {"success": 0.5, "self_bleu": 0.2, "embedding_distance": 0.7}
    assert decide(dict(base), base, ATOL, ATTACKER)[0]
    better = {"success": 0.9, "self_bleu": 0.1, "embedding_distance": 0.8}
    assert decide(better, base, ATOL, ATTACKER)[0]
    within = {"success": 0.375, "self_bleu": 0.35, "embedding_distance": 0.55}
    assert decide(within, base, ATOL, ATTACKER)[0]  # each worse by exactly its tolerance
    weaker = decide({**base, "success": 0.25}, base, ATOL, ATTACKER)
    assert weaker == (False, "success 50% -> 25% (worse by 25% > tolerance 12%)")
    collapsed = decide(
        {"success": 0.9, "self_bleu": 0.8, "embedding_distance": 0.1}, base, ATOL, ATTACKER
    )
    assert not collapsed[0]  # more successes do not buy a collapse
    assert "self_bleu 0.20 -> 0.80 (worse by 0.60 > tolerance 0.15)" in collapsed[1]
    assert "embedding_distance 0.70 -> 0.10" in collapsed[1]
    # no readable figure where the serving attacker had one: never promoted blind
    unread = decide({**base, "success": None}, base, ATOL, ATTACKER)
    assert unread == (False, "success 50% -> no readable figure (cannot tell)")


def test_a_trained_attacker_is_gated_then_swapped_in_and_other_roles_decisions_stay_apart(
    tiny_model_path: Path, smollm2_path: Path, seq_engine: EngineConfig, tmp_path: Path
) -> None:
    """A mute attacker version (every query empty, so the attacker falls back to
    seed texts) is rejected and serving stays on the base; a version with the
    base's weights writes the same greedy queries, reaches the same figures and
    is swapped in. The learner's canary gate never reads the attacker's
    decisions as its own."""
    bus = make_bus(None, tmp_path / "bus.sqlite")
    url = seq_engine.url()
    base = Binding("attacker", url, str(smollm2_path), 0)
    registry = Registry(bus, {"attacker": base})
    tracer = Tracer(tmp_path, "attacker-gate-test")
    chat = OpenAIChat(timeout_s=120)
    seeds = load_seeds()[:2]
    learner = Learner(chat, temperature=0.0, max_tokens=16)
    frozen = Binding("learner", url, str(smollm2_path), 0)

    def new_attacker() -> Attacker:  # greedy: the same weights write the same queries
        return Attacker(chat, seeds, temperature=0.0, max_tokens=24, max_attempts=1)

    async def answer(query: str) -> str:
        return (await learner.respond(frozen, query)).text

    check = make_intent_judge(chat, temperature=0.0, retries=1)
    judge = Binding("critic", url, str(smollm2_path), 0)

    async def intent(query: str) -> Intent:
        return (await check(judge, query)).intent

    # look-alike probes only: success is a refusal (the rule judge's reading) of
    # a query the intent judge reads as harmless; no critic
    gate = AttackerGate(
        seeds,
        new_attacker,
        answer,
        None,
        minilm_embedder(),
        ATOL,
        bus,
        tracer.log,
        samples=2,
        modes=("lookalike",),
        intent=intent,
    )
    assert gate.size == 4
    swapper = Swapper(
        bus,
        registry,
        chat,
        tracer.log,
        group="swapper",
        gate={"attacker": gate},
        served_roles=["attacker"],
    )
    mute = _mute_model(tiny_model_path, tmp_path / "v1")
    twin = _same_weights(smollm2_path, tmp_path / "v2")

    async def go() -> None:
        await swap_mute_then_twin(swapper, registry, "attacker", mute, twin)
        await chat.aclose()

    asyncio.run(go())
    decisions = gate.decisions()
    rejected, promoted = decisions[1], decisions[2]
    assert rejected.role == "attacker" and not rejected.promoted and rejected.against == 0
    assert rejected.metrics["fallback"] == 1.0  # it wrote nothing: seed texts stood in
    assert rejected.metrics["self_bleu"] is None  # so no query of its own to compare
    assert "no readable figure (cannot tell)" in rejected.reason
    assert gate.probes[0] and all(p.mode == "lookalike" for p in gate.probes[0])
    assert promoted.promoted and promoted.metrics == promoted.baseline
    assert promoted.baseline["embedding_distance"] is not None
    assert promoted.baseline["success"] is not None  # the intent judge read the probes
    assert PromotionDecision.model_validate_json((mute / "rejected.json").read_text()) == rejected
    events = [e["event"] for e in trace_events(tmp_path)]
    assert events.count("attacker_gate.measured") == 3  # v0 once (reused), v1, v2
    # the learner's gate on the same bus: attacker v1 and v2 are not learner versions
    learner_gate = CanaryGate(canary_items(None, 1), None, None, TOL, bus, tracer.log)  # type: ignore[arg-type]
    assert learner_gate.decisions() == {}


def test_a_run_serves_every_trained_role_it_calls() -> None:
    """trainer.roles with attacker (on an engine of its own: test_config checks
    that a shared batching engine is refused): both lineages are served."""
    from sparring.orchestrator.wiring import served_roles

    assert served_roles(load_config(None)) == ["learner"]
    own = {"engines.attacker": {"port": 8769}, "roles.attacker.engine": "attacker"}
    cfg = load_config(None, {"trainer.roles": ["learner", "attacker"], **own})
    assert served_roles(cfg) == ["learner", "attacker"]
