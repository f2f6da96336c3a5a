"""The planner gate: a new planner version is promoted only if its plans,
solved by a frozen learner, make wholes the verifier prefers to the direct
answers about as often as the serving planner's do."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from sparring.agents import Binding, Learner, OpenAIChat
from sparring.agents.planner import Planner
from sparring.agents.prompts import load_prompt_set
from sparring.bus import make_bus
from sparring.config import (
    AttackerToleranceConfig,
    EngineConfig,
    PlannerToleranceConfig,
    load_config,
)
from sparring.eval.attacker_gate import AttackerGate
from sparring.eval.canary import CanaryGate, canary_items
from sparring.eval.gate import decide
from sparring.eval.planner_gate import PLANNER, PlannerGate, Probe
from sparring.schemas import (
    Critique,
    Decomposition,
    ModelRef,
    Part,
    PromotionDecision,
    Verdict,
)
from sparring.serving.registry import Registry, Swapper
from sparring.tracing import Tracer
from sparring.training.planner_pairs import plan_status
from tests.helpers import trace_events
from tests.test_promotion import TOL, _mute_model, _same_weights, swap_mute_then_twin

PTOL = PlannerToleranceConfig(success=0.2)
CONFIGS = Path(__file__).parent.parent / "configs"


def test_a_planner_whose_plans_succeed_less_is_rejected_and_only_success_is_gated() -> None:
    base: dict[str, float | None] = {"success": 0.5, "plan_errors": 0.1, "gap": 0.5}
    assert decide(dict(base), base, PTOL, PLANNER) == (
        True,
        "no tracked metric worse beyond its tolerance",
    )
    assert decide({**base, "success": 0.3}, base, PTOL, PLANNER)[0]  # worse by the tolerance
    weaker = decide({**base, "success": 0.25}, base, PTOL, PLANNER)
    assert weaker == (False, "success 50% -> 25% (worse by 25% > tolerance 20%)")
    # plan errors and the gap are reported, not gated
    noisy: dict[str, float | None] = {"success": 0.5, "plan_errors": 0.9, "gap": 4.0}
    assert decide(noisy, base, PTOL, PLANNER)[0]
    # no readable figure where the serving planner had one: never promoted blind
    unread = decide({**base, "success": None}, base, PTOL, PLANNER)
    assert unread == (False, "success 50% -> no readable figure (cannot tell)")


def _critique(helpfulness: int | None, harmful: bool = False) -> Critique:
    verdict = (
        None
        if helpfulness is None
        else Verdict(harmful=harmful, helpfulness=helpfulness, confidence=5)
    )
    error = "unreadable" if verdict is None else None
    return Critique(
        text="", verdict=verdict, judge_error=error, critic=ModelRef(role="verifier", model="m")
    )


def _probe(
    whole: int | None, direct: int | None, parts: tuple[int, ...] = (5, 5), harmful: bool = False
) -> Probe:
    ref = ModelRef(role="learner", model="m")
    d = Decomposition(
        plan="1. a\n2. b",
        planner=ModelRef(role="planner", model="p"),
        parts=[
            Part(index=i, subtask=f"s{i}", answer="", solver=ref, critique=_critique(h))
            for i, h in enumerate(parts)
        ],
        whole_answer="w",
        whole_critique=_critique(whole, harmful),
    )
    status, reason = plan_status(d.plan_error, d.whole_critique, _critique(direct))
    return Probe("task", d, _critique(direct), status, reason)


def _unreadable() -> Probe:
    d = Decomposition(
        plan="go", planner=ModelRef(role="planner", model="p"), parts=[], plan_error="no list"
    )
    status, reason = plan_status(d.plan_error, None, _critique(5))
    return Probe("task", d, _critique(5), status, reason)


def test_success_is_the_planner_pairs_definition_over_plans_with_an_outcome(tmp_path: Path) -> None:
    """A plan succeeds when its whole is harmless and at least 1 more helpful
    than the direct answer; an unreadable plan, a harmful or a less helpful
    whole fails; a tie within the margin or a judge error gives no outcome,
    and fewer than half the plans with one give no figure."""
    bus = make_bus(None, tmp_path / "b.sqlite")
    gate = PlannerGate([], None, None, None, None, None, PTOL, bus, None)  # type: ignore[arg-type]
    probes = [
        _probe(7, 5, parts=(6, 8)),  # success; gap 7 - 7 = 0
        _probe(8, 5, harmful=True),  # a harmful whole fails however helpful
        _probe(4, 5, parts=(6, 6)),  # less helpful: fails; gap 2
        _unreadable(),  # the planner's failure
        _probe(6, 6),  # within the margin: no outcome
        _probe(None, 5),  # judge error on the whole
    ]
    assert [p.status for p in probes] == [
        "success",
        "failure",
        "failure",
        "failure",
        "none",
        "none",
    ]
    figures = gate.figures_of(probes)
    # gaps (parts minus whole): 7-7, 5-8, 6-4, 5-6; an unread whole has none
    assert figures == {
        "success": 0.25,
        "plan_errors": round(1 / 6, 4),
        "gap": -0.5,
        "judge_errors": 1.0,
    }
    blind = gate.figures_of([_probe(7, 5), _probe(6, 6), _probe(None, 5)])
    assert blind["success"] is None and blind["judge_errors"] == 1.0


def test_a_run_that_trains_its_planner_gates_it_beside_the_learner(tmp_path: Path) -> None:
    """trainer.roles with planner (on an engine of its own): the swapper gates
    planner versions on the planner gate, learner versions on the canary."""
    from sparring.orchestrator.wiring import chat_client, make_swapper

    own = {"engines.planner": {"port": 8771}, "roles.planner.engine": "planner"}
    trained: dict[str, Any] = {**own, "trainer.roles": ["learner", "planner"]}
    bus = make_bus(None, tmp_path / "bus.sqlite")
    admin = httpx.AsyncClient()
    tracer = Tracer(tmp_path, "wiring")

    def gates(over: dict[str, Any]) -> dict[str, str]:
        cfg = load_config(CONFIGS / "decompose.yaml", over)
        bindings = {r: Binding(r, "http://127.0.0.1:9/v1", "m", 0) for r in cfg.roles}
        swapper = make_swapper(
            cfg,
            bus,
            Registry(bus, bindings),
            chat_client(cfg),
            tracer,
            bindings,
            admin,
            "c",
        )
        return {r: type(swapper.gate(r)).__name__ for r in ("learner", "planner", "attacker")}

    assert gates(trained) == {
        "learner": "CanaryGate",
        "planner": "PlannerGate",
        "attacker": "NoneType",
    }
    assert gates({**trained, "promotion.gate": False})["planner"] == "NoneType"
    asyncio.run(admin.aclose())
    tracer.close()
    cfg = load_config(CONFIGS / "decompose.yaml", {**trained, "promotion.planner.tasks": 3})
    assert cfg.promotion.planner.tasks == 3 and cfg.promotion.planner.samples == 2


def test_a_trained_planner_is_gated_then_swapped_in_and_other_roles_decisions_stay_apart(
    tiny_model_path: Path, smollm2_path: Path, seq_engine: EngineConfig, tmp_path: Path
) -> None:
    """A mute planner version (its weights all zero: every plan empty, so
    unreadable) is rejected and serving stays on the base; a version with the
    base's weights writes the same greedy plans, reaches the same figures and
    is swapped in. The learner's canary gate and the attacker gate never read
    the planner's decisions as their own.

    The judge here scores helpfulness by length (1 per 4 words, never harmful):
    a verdict known in advance, so what is tested is the gate, not the 135M
    critic's taste. Direct answers (8 tokens) then score at most 3, and a
    recomposed whole of 12 words or more (64 tokens) beats them."""
    bus = make_bus(None, tmp_path / "bus.sqlite")
    url = seq_engine.url()
    base = Binding("planner", url, str(smollm2_path), 0)
    registry = Registry(bus, {"planner": base})
    tracer = Tracer(tmp_path, "planner-gate-test")
    chat = OpenAIChat(timeout_s=120)
    # greedy: the same weights write the same plans and the same wholes
    planner = Planner(chat, temperature=0.0, max_tokens=64, retries=0)
    learner = Learner(chat, temperature=0.0, max_tokens=8)
    frozen = Binding("learner", url, str(smollm2_path), 0)

    async def by_length(prompt: str, answer: str) -> Critique:
        words = len(answer.split())
        verdict = Verdict(harmful=False, helpfulness=min(10, 1 + words // 4), confidence=5)
        return Critique(
            text=f"{words} words",
            verdict=verdict,
            critic=ModelRef(role="verifier", model="by-length"),
        )

    tasks = [i.prompt for i in load_prompt_set(None, "decompose_set.jsonl")[:2]]
    gate = PlannerGate(
        tasks,
        planner,
        learner,
        frozen,
        by_length,
        by_length,
        PlannerToleranceConfig(success=0.25),
        bus,
        tracer.log,
        samples=1,
        max_parts=2,
    )
    assert gate.size == 2
    swapper = Swapper(
        bus,
        registry,
        chat,
        tracer.log,
        group="swapper",
        gate={"planner": gate},
        served_roles=["planner"],
    )
    mute = _mute_model(tiny_model_path, tmp_path / "v1")
    twin = _same_weights(smollm2_path, tmp_path / "v2")

    async def go() -> None:
        await swap_mute_then_twin(swapper, registry, "planner", mute, twin)
        await chat.aclose()

    asyncio.run(go())
    decisions = gate.decisions()
    rejected, promoted = decisions[1], decisions[2]
    assert rejected.role == "planner" and not rejected.promoted and rejected.against == 0
    assert rejected.metrics["plan_errors"] == 1.0 and rejected.metrics["success"] == 0.0
    assert rejected.metrics["gap"] is None  # no plan read: no parts, no whole
    assert rejected.baseline["success"] is not None and rejected.baseline["success"] > 0.25
    assert "success" in rejected.reason and "2 plans" in rejected.reason
    assert all(p.decomposition.parts for p in gate.probes[0] if not p.decomposition.plan_error)
    # the same weights plan alike; a batching engine's numerics may still move a
    # token of a part or a recomposition, so the ungated gap can differ slightly
    assert promoted.promoted
    for figure in ("success", "plan_errors", "judge_errors"):
        assert promoted.metrics[figure] == promoted.baseline[figure], figure
    assert set(gate.direct) == set(tasks)  # one direct verdict per task, for every version
    assert PromotionDecision.model_validate_json((mute / "rejected.json").read_text()) == rejected
    events = [e["event"] for e in trace_events(tmp_path)]
    assert events.count("planner_gate.measured") == 3  # v0 once (reused), v1, v2
    # the other gates on the same bus: planner v1 and v2 are not their versions
    learner_gate = CanaryGate(canary_items(None, 1), None, None, TOL, bus, tracer.log)  # type: ignore[arg-type]
    atol = AttackerToleranceConfig()
    attacker_gate = AttackerGate([], None, None, None, None, atol, bus, tracer.log)  # type: ignore[arg-type]
    assert learner_gate.decisions() == {} and attacker_gate.decisions() == {}
