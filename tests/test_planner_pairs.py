"""Planner preference pairs: for one served planner request, a plan whose
recomposed whole the verifier judged better than the learner's direct answer
over one whose whole was judged harmful or worse, or whose plan could not be
read; judge errors never an outcome; provenance recorded by the graph."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sparring.agents.planner import Planner
from sparring.config import ConfigError, EngineConfig, load_config
from sparring.llm import Binding, Completion, Message
from sparring.schemas import (
    ChatMessage,
    Critique,
    Decomposition,
    Episode,
    ModelRef,
    Verdict,
)
from sparring.training.planner_pairs import plan_request, planner_pairs

PLANNER = ModelRef(role="planner", model="p", version=2)
VERIFIER = ModelRef(role="verifier", model="v")
DECOMPOSE = Path(__file__).parent.parent / "configs" / "decompose.yaml"


def _messages(task: str, tag: str = "0a1b2c3d") -> list[ChatMessage]:
    return [
        ChatMessage(role="system", content="Split the task into at most 3 subtasks."),
        ChatMessage(role="user", content=f"TASK: [BEGIN {tag}]\n{task}\n[END {tag}]"),
    ]


def _critique(harmful: bool | None, helpfulness: int = 5) -> Critique:
    if harmful is None:
        return Critique(text="?", verdict=None, critic=VERIFIER, judge_error="no verdict")
    verdict = Verdict(harmful=harmful, helpfulness=helpfulness, confidence=8)
    return Critique(text=f"helpfulness {helpfulness}", verdict=verdict, critic=VERIFIER)


def _episode(
    n: int,
    plan: str,
    whole: Critique | None,
    direct: Critique | None = None,
    task: str = "Plan a hike.",
    plan_error: str | None = None,
    recorded: bool = True,
    tag: str = "0a1b2c3d",
) -> Episode:
    d = Decomposition(
        plan=plan,
        planner=PLANNER,
        parts=[],
        plan_error=plan_error,
        plan_messages=_messages(task, tag) if recorded else [],
        whole_answer="" if plan_error else "the whole",
        whole_critique=None if plan_error else whole,
    )
    return Episode(
        episode_id=f"e{n}",
        run_id="r",
        category="planning",
        query=task,
        attacker=ModelRef(role="dataset", model="decompose_set", version=0),
        answer="the direct answer",
        learner=ModelRef(role="learner", model="m", version=1),
        critique=direct or _critique(False, 5),
        outcome="attack_failure",
        graph="decompose",
        decomposition=d,
        started_at=float(n),
        finished_at=float(n) + 1,
    )


def _won(plan: str, n: int = 1, **kw: Any) -> Episode:
    return _episode(n, plan, _critique(False, 7), **kw)


def _lost(plan: str, n: int = 2, **kw: Any) -> Episode:
    return _episode(n, plan, _critique(False, 3), **kw)


def _status(outcomes: list[Any]) -> dict[str, str]:
    return {o.episode_id: o.status for o in outcomes}


GOOD = "1. Pick a short marked trail\n2. Pack water and a map\n3. Tell a friend"
BAD = "1. Go\n2. Walk"


def test_a_plan_whose_whole_beat_the_direct_answer_is_chosen() -> None:
    episodes = [_lost(BAD), _won(GOOD, n=3)]
    (pair,), outcomes = planner_pairs(episodes)
    assert _status(outcomes) == {"e2": "failure", "e3": "success"}
    assert pair.kind == "plan" and pair.role == "planner"
    assert (pair.chosen, pair.rejected) == (GOOD, BAD)
    assert pair.messages == _messages("Plan a hike.") and pair.prompt == "Plan a hike."
    assert pair.chosen_by == pair.rejected_by == PLANNER and pair.episode_id == "e3"
    assert pair.chosen_verdict and pair.chosen_verdict.helpfulness == 7
    assert "whole 7 vs direct 5" in pair.critique and "whole 3 vs direct 5" in pair.critique


def test_success_needs_the_margin_and_a_harmless_whole() -> None:
    tie = _episode(1, "1. a\n2. b", _critique(False, 5))
    one_up = _episode(2, "1. c\n2. d", _critique(False, 6))
    harmful = _episode(3, "1. e\n2. f", _critique(True, 9))
    _, outcomes = planner_pairs([tie, one_up, harmful])
    assert _status(outcomes) == {"e1": "none", "e2": "success", "e3": "failure"}
    assert "margin" in outcomes[0].reason and "harmful" in outcomes[2].reason
    _, strict = planner_pairs([one_up], margin=2)
    assert strict[0].status == "none"


def test_an_unreadable_plan_is_the_planners_failure() -> None:
    failed = _episode(2, "Just go.", None, plan_error="expected a numbered list")
    (pair,), outcomes = planner_pairs([_won(GOOD), failed])
    assert outcomes[1].status == "failure"
    assert outcomes[1].reason == "plan unreadable: expected a numbered list"
    assert pair.rejected == "Just go." and pair.rejected_verdict is None


def test_a_judge_error_gives_no_outcome_and_no_pair() -> None:
    on_whole = _episode(2, BAD, _critique(None))
    on_direct = _episode(3, "1. x\n2. y", _critique(False, 1), direct=_critique(None))
    pairs, outcomes = planner_pairs([_won(GOOD), on_whole, on_direct])
    assert pairs == []
    assert _status(outcomes) == {"e1": "success", "e2": "none", "e3": "none"}
    assert all("judge error" in o.reason for o in outcomes[1:])
    # a harmful whole fails whatever the direct answer's verdict
    harmful = _episode(4, BAD, _critique(True, 2), direct=_critique(None))
    (pair,), _ = planner_pairs([_won(GOOD), harmful])
    assert pair.rejected == BAD


def test_pairs_come_only_from_identical_requests() -> None:
    other = _lost(BAD, task="Plan a picnic.")
    old = _lost("1. p\n2. q", n=3, recorded=False)  # before plan_messages was recorded
    pairs, outcomes = planner_pairs([_won(GOOD), other, old])
    assert pairs == [] and outcomes[1].request != outcomes[0].request
    assert outcomes[2].status == "none" and "no planner request" in outcomes[2].reason
    assert outcomes[0].request == plan_request(_messages("Plan a hike."))


def test_a_request_is_the_same_whatever_its_fence_tag() -> None:
    """render() fences the task under a fresh random tag each time: two plans for
    one task pair, and the pair trains the chosen plan's request as served."""
    (pair,), _ = planner_pairs([_won(GOOD, tag="ffff0000"), _lost(BAD)])
    assert pair.messages == _messages("Plan a hike.", "ffff0000")
    assert plan_request(_messages("Plan a hike.", "1234abcd")) != plan_request(
        _messages("Plan a hike!", "1234abcd")
    )


def test_each_plan_is_used_once_per_side_and_never_on_both() -> None:
    episodes = [
        _won(GOOD, 1),
        _won(GOOD, 2),  # the same plan again: chosen once
        _lost(GOOD, 3),  # a plan that also succeeded is never rejected
        _lost(BAD, 4),
        _lost(BAD, 5),
        _won("1. Check the weather\n2. Pack", 6),
    ]
    pairs, _ = planner_pairs(episodes)
    assert [(p.chosen, p.rejected) for p in pairs] == [(GOOD, BAD)]


def test_rebuilding_the_pairs_gives_the_same_ids() -> None:
    episodes = [_won(GOOD), _lost(BAD)]
    (first,), _ = planner_pairs(episodes)
    (again,), _ = planner_pairs(list(reversed(episodes)))
    assert first.pair_id == again.pair_id
    (other,), _ = planner_pairs([_won(GOOD), _lost(BAD, n=7)])
    assert other.pair_id != first.pair_id


def test_old_records_still_parse() -> None:
    d = _won(GOOD).decomposition
    assert d is not None
    old = {k: v for k, v in d.model_dump().items() if k != "plan_messages"}
    assert Decomposition.model_validate(old).plan_messages == []


def test_the_planner_returns_the_request_it_was_served() -> None:
    """plan(): the messages sent, re-sent unchanged on a retry, come back with the plan."""
    sent: list[list[Message]] = []
    replies = iter(["no list here", "1. Pack water\n2. Check the weather"])

    async def chat(binding: Binding, messages: list[Message], **_: Any) -> Completion:
        sent.append(messages)
        return Completion(next(replies), 10, 5, 0.0, binding)

    planner = Planner(chat, temperature=0.7, max_tokens=64, retries=1)
    binding = Binding("planner", "http://x", "p", 0)
    plan = asyncio.run(planner.plan(binding, "Plan a hike.", 3))
    assert plan.subtasks == ["Pack water", "Check the weather"] and plan.error is None
    assert sent[0] == sent[1] == plan.messages
    assert plan.messages[0]["role"] == "system" and "Plan a hike." in plan.messages[-1]["content"]


def _planner_config(**over: Any) -> Any:
    # a trained planner needs an engine of its own (configs/decompose.yaml shares one)
    own = {"engines.planner": {"port": 8771}, "roles.planner.engine": "planner"}
    return load_config(DECOMPOSE, {"trainer.roles": ["learner", "planner"], **own, **over})


def test_a_trained_planner_needs_the_decompose_graph(tmp_path: Path) -> None:
    assert _planner_config().trainer.roles == ["learner", "planner"]
    with pytest.raises(ConfigError, match=r"(?s)trainer.roles names 'planner'.*'redteam'"):
        _planner_config(**{"loop.graph": "redteam"})
    with pytest.raises(ConfigError, match="roles.planner is trained"):
        load_config(DECOMPOSE, {"trainer.roles": ["learner", "planner"]})  # shares local
    p = tmp_path / "run.yaml"
    p.write_text("trainer:\n  roles: [planner]\n")
    with pytest.raises(ConfigError, match="trainer.roles names 'planner', but roles binds"):
        load_config(p)


def test_the_runs_feed_publishes_each_planner_pair_once_across_restarts(tmp_path: Path) -> None:
    from sparring.bus import make_bus
    from sparring.bus.streams import EPISODES, PAIRS
    from sparring.orchestrator.attacker_feed import role_feed
    from sparring.tracing import process_logger

    assert role_feed(["learner"], make_bus(None, tmp_path / "none.sqlite"), None) is None
    bus = make_bus(None, tmp_path / "bus.sqlite")
    for e in (_won(GOOD, 1), _lost(BAD, 2)):
        EPISODES.publish(bus, e.episode_id, e)
    feed = role_feed(["learner", "planner"], bus, process_logger("test"))
    assert feed is not None and feed.publish() == 1 and feed.publish() == 0
    for e in (_won("1. Check the weather\n2. Pack", 3), _lost("1. Run\n2. Rest", 4)):
        EPISODES.publish(bus, e.episode_id, e)
    restarted = role_feed(["learner", "planner"], bus, process_logger("test"))
    assert restarted is not None and restarted.publish() == 1
    pairs = PAIRS.records(bus)
    assert len(pairs) == 2 and all(p.role == "planner" and p.kind == "plan" for p in pairs)
    assert {p.chosen for p in pairs} == {GOOD, "1. Check the weather\n2. Pack"}


def test_a_run_records_the_planners_request_on_each_episode(
    tiny_model_path: Path, engine: EngineConfig, seq_engine: EngineConfig, tmp_path: Path
) -> None:
    """Through the graph, with the planner trained: each episode's decomposition
    keeps the request the planner was served, the same for one task (up to its
    fence tag); any
    planner pair the run's feed published trains on it."""
    from sparring.agents.planner import plan_examples
    from sparring.bus import make_bus
    from sparring.bus.streams import EPISODES, PAIRS
    from sparring.orchestrator import Loop
    from tests.helpers import tiny_config

    prompts = tmp_path / "one.jsonl"
    prompts.write_text(json.dumps({"category": "planning", "prompt": "Plan a hike."}) + "\n")
    tiny = {"model": "tiny", "max_tokens": 16}
    cfg = tiny_config(
        tiny_model_path,
        engine,
        seq_engine,
        tmp_path,
        loop__graph="decompose",
        loop__prompts=str(prompts),
        loop__max_subtasks=2,
        loop__concurrency=2,
        budget__episodes=3,
        trainer__roles=["learner", "planner"],
        roles__planner={**tiny, "engine": "seq", "temperature": 1.0},
        roles__verifier={**tiny, "engine": "local"},
    )
    run_dir = tmp_path / "runs" / "planner"
    asyncio.run(Loop(cfg, run_dir, progress=False).run())
    bus = make_bus(None, run_dir / "bus.sqlite")
    episodes = EPISODES.records(bus)
    assert len(episodes) == 3
    served = set()
    for ep in episodes:
        d = ep.decomposition
        assert d is not None and d.plan_messages and d.plan_messages[0].role == "system"
        assert len(d.plan_messages) == 2 * len(plan_examples()) + 2
        assert "Plan a hike." in d.plan_messages[-1].content
        served.add(plan_request(d.plan_messages))
    assert len(served) == 1
    for pair in (p for p in PAIRS.records(bus) if p.role == "planner"):
        assert pair.kind == "plan" and plan_request(pair.messages) in served
