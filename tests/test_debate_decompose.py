"""The debate and decompose graphs: their records, their pairs, their parsers,
and each end to end on SmolLM2 (greedy, so the yield of pairs is deterministic)."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sparring.agents.critic import VerdictParseError
from sparring.agents.debate import parse_choice
from sparring.agents.planner import PlanParseError, parse_plan
from sparring.bus import make_bus
from sparring.config import ConfigError, EngineConfig
from sparring.graphs import load_run_config
from sparring.orchestrator import Loop
from sparring.schemas import (
    Critique,
    Debate,
    DebateTurn,
    Decomposition,
    Episode,
    Judgement,
    ModelRef,
    Part,
    PreferencePair,
    Verdict,
)
from sparring.summary import summarise
from sparring.training.pairs import argument, debate_pairs
from sparring.training.worker import Trainer
from tests.helpers import tiny_config, trace_events

GREEDY = {"engine": "seq", "model": "critic", "temperature": 0.0}


@pytest.mark.parametrize(
    ("reply", "pick"),
    [("A", "A"), ("b.", "B"), ("(B)", "B"), ("Answer A", "A"), ("A because it is", "A")],
)
def test_a_pick_is_read_from_a_short_reply(reply: str, pick: str) -> None:
    assert parse_choice(reply) == pick


@pytest.mark.parametrize("reply", ["", "Both are fine", "A or B", "I think so", "C"])
def test_an_unreadable_pick_is_an_error_never_a_guess(reply: str) -> None:
    with pytest.raises(VerdictParseError):
        parse_choice(reply)


def test_a_plan_is_read_from_numbered_or_bulleted_lines() -> None:
    text = "Here is a plan:\n1. Pack water\n2) Check the weather\n- Tell a friend\n4. Pack water"
    assert parse_plan(text, 3) == ["Pack water", "Check the weather", "Tell a friend"]
    assert parse_plan(text, 2) == ["Pack water", "Check the weather"]
    with pytest.raises(PlanParseError, match="numbered list"):
        parse_plan("Just go hiking, it is easy.", 3)
    with pytest.raises(PlanParseError):
        parse_plan("1. Only one step", 3)


def _ref(role: str, version: int = 0) -> ModelRef:
    return ModelRef(role=role, model=f"m-{role}", version=version)


def _debate_episode(winner: str | None, helpful_is: str = "B") -> Episode:
    turns = [
        DebateTurn(side=side, turn=n, text=f"{side} argument {n}", speaker=_ref(role))  # type: ignore[arg-type]
        for n in (1, 2)
        for side, role in (("helpful", "learner"), ("sneaky", "sneaky"))
    ]
    sneaky_is = "A" if helpful_is == "B" else "B"
    pick = None if winner is None else (helpful_is if winner == "helpful" else sneaky_is)
    judgement = Judgement(
        text="judged",
        winner=pick,
        confidence=7 if pick else None,  # type: ignore[arg-type]
        judge=_ref("judge"),
        judge_error=None if pick else "unreadable",
    )
    debate = Debate(
        helpful_position="No",
        sneaky_position="Yes",
        helpful_is=helpful_is,  # type: ignore[arg-type]
        turns=turns,
        winner=winner,
        judgement=judgement,  # type: ignore[arg-type]
    )
    return Episode(
        episode_id="e1",
        run_id="r",
        category="c",
        query="Is it safe?",
        attacker=_ref("dataset"),
        answer="\n\n".join(t.text for t in turns if t.side == "helpful"),
        learner=_ref("learner", 3),
        outcome="judge_error" if winner is None else f"{winner}_won",  # type: ignore[arg-type]
        graph="debate",
        debate=debate,
        started_at=0.0,
        finished_at=1.0,
    )


def test_debate_pairs_put_the_judges_pick_over_the_other_argument() -> None:
    ep = _debate_episode("sneaky", helpful_is="B")
    (pair,) = debate_pairs(ep)
    assert pair.kind == "debate" and pair.chosen == argument(ep, "sneaky")
    assert pair.chosen == "sneaky argument 1\n\nsneaky argument 2"
    assert pair.rejected == ep.answer and pair.chosen_by.role == "sneaky"
    # the prompt shows the candidates as the judge saw them: helpful was B
    assert "(A) Yes (B) No" in pair.prompt and "Is it safe?" in pair.prompt
    assert pair.judgement is not None and pair.judgement.winner == "A"
    assert pair.chosen_verdict is None and pair.rejected_verdict is None
    assert debate_pairs(ep, require_truth=True) == []  # the judge was fooled
    (truthful,) = debate_pairs(_debate_episode("helpful"), require_truth=True)
    assert truthful.chosen == "helpful argument 1\n\nhelpful argument 2"
    assert debate_pairs(_debate_episode(None)) == []  # a judge error is never evidence


def _critique(harmful: bool | None, helpfulness: int = 5) -> Critique:
    v = None if harmful is None else Verdict(harmful=harmful, helpfulness=helpfulness, confidence=8)
    return Critique(text="c", verdict=v, critic=_ref("critic"), judge_error=None if v else "x")


def _part(i: int, c: Critique) -> Part:
    return Part(index=i, subtask=f"s{i}", answer=f"a{i}", solver=_ref("learner"), critique=c)


def test_a_decomposition_keeps_part_and_whole_scores_apart() -> None:
    d = Decomposition(
        plan="1. a\n2. b",
        planner=_ref("planner"),
        parts=[_part(0, _critique(False, 8)), _part(1, _critique(False, 6))],
        whole_answer="w",
        whole_critique=_critique(True, 3),
    )
    assert d.part_helpfulness == 7 and d.parts_harmful == 0
    assert d.gap == 4 and d.harmless_parts_harmful_whole is True
    # an unreadable part leaves the question open; it is not counted as harmless
    open_ = d.model_copy(update={"parts": [*d.parts, _part(2, _critique(None))]})
    assert open_.harmless_parts_harmful_whole is None and open_.part_helpfulness == 7
    failed = Decomposition(plan="go", planner=_ref("planner"), parts=[], plan_error="no list")
    assert failed.gap is None and failed.harmless_parts_harmful_whole is None


def test_a_debate_prompt_set_without_the_answers_fails_before_any_model_is_called(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "questions.jsonl"
    bad.write_text(json.dumps({"prompt": "Is the sea salty?", "answer": "Yes"}) + "\n")
    cfg = tmp_path / "debate.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            loop: {{graph: debate, prompts: {bad}}}
            roles:
              learner: {{engine: learner, model: smollm2}}
              sneaky: {{engine: learner, model: smollm2, version: latest}}
              judge: {{engine: local, model: smollm2}}
            """
        )
    )
    with pytest.raises(ConfigError) as err:
        load_run_config(cfg)
    msg = str(err.value)
    assert "debate.yaml: loop.prompts (graph 'debate')" in msg
    assert "questions.jsonl: row 1 has no 'wrong_answer'" in msg
    no_judge = tmp_path / "no-judge.yaml"
    no_judge.write_text(
        cfg.read_text().replace(f", prompts: {bad}", "").replace("  judge:", "  critic:")
    )
    with pytest.raises(ConfigError, match=r"graph 'debate' calls role 'judge'"):
        load_run_config(no_judge)


def _run(cfg: Any, run_dir: Path) -> tuple[list[Episode], list[PreferencePair]]:
    asyncio.run(Loop(cfg, run_dir, progress=False).run())
    bus = make_bus(None, run_dir / "bus.sqlite")
    episodes = [Episode.model_validate(d.payload) for d in bus.history("episodes")]
    pairs = [PreferencePair.model_validate(d.payload) for d in bus.history("pairs")]
    return episodes, pairs


def _trainer_takes_them(cfg: Any, tiny: Path, run_dir: Path, n: int) -> None:
    bus = make_bus(None, run_dir / "bus.sqlite")
    wide = cfg.trainer.model_copy(update={"pairs_per_version": 64})
    trainer = Trainer(bus, tiny, run_dir / "versions", wide)
    # none poison: each held to train, or refused for a degenerate chosen answer
    # (the tiny model's text often loops)
    assert trainer.poll() == n == len(trainer.batch) + len(trainer.refused)
    assert all(why.startswith("degenerate chosen answer") for _, why in trainer.refused)


def test_debate_runs_end_to_end(
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
        loop__graph="debate",
        loop__debate_turns=2,
        loop__concurrency=4,
        budget__episodes=4,
        roles__learner={**GREEDY, "max_tokens": 24},
        roles__sneaky={**GREEDY, "max_tokens": 24, "version": "latest"},
        roles__judge={**GREEDY, "max_tokens": 24},
    )
    run_dir = tmp_path / "runs" / "debate"
    episodes, pairs = _run(cfg, run_dir)
    assert len(episodes) == 4
    events = trace_events(run_dir)
    for ep in episodes:
        d = ep.debate
        assert d is not None and ep.graph == "debate" and ep.critique is None
        assert [(t.side, t.turn) for t in d.turns] == [
            ("helpful", 1),
            ("sneaky", 1),
            ("helpful", 2),
            ("sneaky", 2),
        ]
        assert {t.speaker.role for t in d.turns} == {"learner", "sneaky"}
        assert ep.answer == argument(ep, "helpful")
        assert ep.outcome == ("judge_error" if d.winner is None else f"{d.winner}_won")
        assert d.judgement.judge.role == "judge"
        assert d.helpful_position != d.sneaky_position
        nodes = [e["node"] for e in events if e.get("episode_id") == ep.episode_id]
        assert nodes == ["draw", "helpful", "sneaky", "helpful", "sneaky", "judge", "emit"]
    assert any(ep.debate and ep.debate.winner for ep in episodes), "no readable pick at all"
    assert pairs and all(p.kind == "debate" and p.judgement for p in pairs)
    _trainer_takes_them(cfg, tiny_model_path, run_dir, len(pairs))
    (row,) = summarise(make_bus(None, run_dir / "bus.sqlite"))
    assert row.judge_accuracy is not None and row.pairs_emitted == len(pairs)


def test_decompose_runs_end_to_end(
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
        loop__graph="decompose",
        loop__max_subtasks=2,
        loop__concurrency=3,
        budget__episodes=3,
        loop__pair_margin=0,
        roles__planner={**GREEDY, "max_tokens": 40},
        roles__learner={**GREEDY, "max_tokens": 24},
        roles__critic={**GREEDY, "max_tokens": 24},
        roles__verifier={**GREEDY, "max_tokens": 24},
    )
    run_dir = tmp_path / "runs" / "decompose"
    episodes, pairs = _run(cfg, run_dir)
    assert len(episodes) == 3
    events = trace_events(run_dir)
    for ep in episodes:
        d = ep.decomposition
        assert d is not None and ep.graph == "decompose" and d.planner.role == "planner"
        assert ep.critique is not None and ep.critique.critic.role == "verifier"
        nodes = [e["node"] for e in events if e.get("episode_id") == ep.episode_id]
        assert nodes[:4] == ["draw", "respond", "verify_direct", "plan"]  # review: not needed
        if d.plan_error:
            assert d.parts == [] and nodes[-1] == "emit" and "solve" not in nodes
            continue
        assert [p.index for p in d.parts] == [0, 1]
        for p in d.parts:
            assert p.solver.role == "learner" and p.critique.critic.role == "critic"
            assert p.subtask in d.plan
        assert d.whole_answer == ep.refined_answer and d.whole_critique == ep.refined_critique
        assert nodes.count("solve") == nodes.count("judge_part") == len(d.parts)
        emit = next(
            e for e in events if e.get("node") == "emit" and e["episode_id"] == ep.episode_id
        )
        assert emit["gap"] == d.gap and emit["parts"] == len(d.parts)
    assert any(ep.decomposition and ep.decomposition.parts for ep in episodes), "no plan read"
    assert pairs and all(p.kind == "decompose" and p.chosen_by.role == "planner" for p in pairs)
    _trainer_takes_them(cfg, tiny_model_path, run_dir, len(pairs))
    (row,) = summarise(make_bus(None, run_dir / "bus.sqlite"))
    assert row.harmful_wholes_from_harmless_parts is not None


def test_a_plan_cut_off_at_its_token_limit_loses_its_cut_line() -> None:
    text = "1. Pack water\n2. Check the weather\n3. Tell a"
    assert parse_plan(text, 3, truncated=True) == ["Pack water", "Check the weather"]
    assert parse_plan(text, 3) == ["Pack water", "Check the weather", "Tell a"]
