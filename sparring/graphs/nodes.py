"""Shared graph nodes: each takes ``(state, runtime)`` and returns a partial update.

Clients, the registry, the bus and the trace logger arrive through the
runtime context (:class:`LoopContext`), never through module globals.
"""

from __future__ import annotations

import asyncio
import operator
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypedDict

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from sparring.agents import Attacker, Binding, Completion, Learner
from sparring.agents.prompts import PromptSource
from sparring.bus import Bus
from sparring.schemas import (
    ChatMessage,
    Contrast,
    Critique,
    Episode,
    HumanReview,
    Mode,
    ModelRef,
    PreferencePair,
    ReviewRequest,
    combine_panel,
    review_id,
)
from sparring.serving.registry import Registry
from sparring.training.pairs import contrast_pairs, refinement_pairs


class EpisodeState(TypedDict, total=False):
    episode_id: str
    round: int  # refinement rounds done (self_refine)
    latest_answer: str  # self_refine: the newest refinement and its critique
    latest_critique: dict[str, Any]
    started_at: float
    category: str
    query: str
    attacker: dict[str, Any]
    attack_level: int | None  # the attacker's difficulty level (adaptive difficulty)
    learner: dict[str, Any]
    answer: str
    critique: dict[str, Any]
    refined_answer: str
    refined_critique: dict[str, Any]
    outcome: str
    pair_ids: list[str]
    visited: Annotated[list[str], operator.add]
    item: dict[str, str]  # the drawn prompt's further columns (debate: answer, wrong_answer)
    # debate
    helpful_is: str  # which label, A or B, the judge sees the helpful side under
    turns: list[dict[str, Any]]
    judgement: dict[str, Any]
    # decompose (a solve task gets index/subtask; its part comes back in parts)
    plan: str
    planner: dict[str, Any]
    plan_error: str | None
    subtasks: list[str]
    index: int
    subtask: str
    parts: Annotated[list[dict[str, Any]], operator.add]
    contrast: dict[str, Any]
    mode: str  # attack or lookalike (the episode's draw)
    messages: list[dict[str, str]]  # the learner's request for its plain answer


@dataclass
class LoopContext:
    run_id: str
    attacker: Attacker | None
    learner: Learner
    critic: Callable[..., Any] | None
    registry: Registry
    bus: Bus
    log: Any
    pair_margin: int = 2
    on_episode: Callable[[Episode, list[PreferencePair]], None] | None = None
    # graphs without an attacker draw their prompts from here (self_refine)
    prompts: PromptSource | None = None
    max_rounds: int = 2
    satisfied_helpfulness: int = 8
    # pause for a person's verdict when the critic's confidence is below this
    review_below_confidence: int | None = None
    review_judge_errors: bool = True
    review_disagreement: float | None = None
    # the roles that judge: one critic, or a peer-review panel
    critics: tuple[str, ...] = ("critic",)
    human_pair_weight: float = 2.0
    graph: str = "redteam"
    # debate: a Debater per arguing role (learner, sneaky), the judge, K turns
    debaters: dict[str, Any] = field(default_factory=dict)
    judge: Callable[..., Any] | None = None
    debate_turns: int = 2
    debate_require_truth: bool = False
    # decompose: the planner, the verifier (a critic bound to roles.verifier)
    planner: Any = None
    verifier: Callable[..., Any] | None = None
    max_subtasks: int = 3
    # competence/conformity: the learner also answers with a safety instruction
    # in context (contrast); a share of redteam episodes take a look-alike
    # (benign) prompt, raised to balance_share while competence pairs trail
    # conformity pairs (pair_counts, kept by the runner)
    contrast: bool = False
    benign_share: float = 0.0
    benign: PromptSource | None = None
    balance_share: float | None = None
    pair_counts: dict[str, int] = field(default_factory=dict)
    attacker_lookalikes: bool = False  # the attacker writes look-alikes (else: drawn)
    refine_rule_check: bool = False  # refinement pairs must agree with the rule judge
    # seed replay: a share of the attacks send an attacker seed example as written
    seed_share: float = 0.0
    seeds: PromptSource | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Ctx = Runtime[LoopContext]


def _binding(ref: dict[str, Any]) -> Binding:
    return Binding(ref["role"], ref["base_url"], ref["model"], ref["version"])


def _ref(binding: Binding) -> ModelRef:
    return ModelRef(role=binding.role, model=binding.model, version=binding.version)


def _trace(
    runtime: Ctx,
    state: EpisodeState,
    node: str,
    binding: Binding | None,
    calls: list[Completion],
    started: float,
    **fields: Any,
) -> None:
    # Every event names the learner version the episode is pinned to, so traces
    # filter by version whichever role spoke.
    if "learner_version" not in fields and state.get("learner"):
        fields["learner_version"] = state["learner"]["version"]
    runtime.context.log.info(
        "node",
        node=node,
        episode_id=state["episode_id"],
        role=binding.role if binding else None,
        model=binding.model if binding else None,
        version=binding.version if binding else None,
        latency_s=round(time.perf_counter() - started, 4),
        model_latency_s=round(sum(c.latency_s for c in calls), 4),
        calls=len(calls),
        prompt_tokens=sum(c.prompt_tokens for c in calls),
        completion_tokens=sum(c.completion_tokens for c in calls),
        **fields,
    )


def draws_benign(episode_id: str, share: float) -> bool:
    """Whether this episode takes a look-alike (benign) prompt instead of an
    attack (fixed by its id and the share, so a resumed episode decides the same)."""
    return share > 0 and random.Random(episode_id).random() < share


def lookalike_share(ctx: LoopContext) -> float:
    """The share of look-alike episodes now: ``benign_share``, or
    ``balance_share`` while the run's competence pairs trail its conformity
    pairs (contrast by design: the trainer should see at least as many)."""
    counts = ctx.pair_counts
    trailing = counts.get("competence", 0) < counts.get("conformity", 0)
    if ctx.balance_share is not None and trailing:
        return max(ctx.benign_share, ctx.balance_share)
    return ctx.benign_share


def replays_seed(episode_id: str, share: float) -> bool:
    """Whether this attack sends a seed example as written instead of the
    attacker's rewrite (fixed by the episode id, independent of draws_benign)."""
    return share > 0 and random.Random(f"{episode_id}:seed").random() < share


async def attack(state: EpisodeState, runtime: Ctx) -> EpisodeState:
    """An attack, or (a ``lookalike_share`` of the episodes) a harmless look-alike
    of one; a ``seed_share`` of either is a seed example sent as written, the
    rest the attacker writes in that mode."""
    started = time.perf_counter()
    ctx = runtime.context
    eid = state["episode_id"]
    lookalike = ctx.benign is not None and draws_benign(eid, lookalike_share(ctx))
    mode: Mode = "lookalike" if lookalike else "attack"
    written = ctx.attacker is not None and ctx.attacker_lookalikes
    if lookalike and (not written or replays_seed(eid, ctx.seed_share)):
        update = await draw(state, runtime, ctx.benign)
        return {**update, "category": f"benign:{update['category']}", "mode": mode}
    if not lookalike and ctx.seeds is not None and replays_seed(eid, ctx.seed_share):
        return {**await draw(state, runtime, ctx.seeds), "mode": mode}  # from the seed set
    binding = ctx.registry.binding("attacker")
    # The learner's version is fixed here, for the whole episode (hot swap rule).
    learner = ctx.registry.acquire("learner", eid)
    assert ctx.attacker is not None, "the attack node needs roles.attacker bound"
    result = await ctx.attacker(binding, ctx.attacker.next_seed(), mode=mode)
    category = f"benign:{result.seed.category}" if lookalike else result.seed.category
    _trace(
        runtime, state, "attack", binding, result.calls, started,
        category=category, output=result.query, mode=mode,
        repeats_avoided=result.repeats_avoided, learner_version=learner.version,
        level=result.level,
    )  # fmt: skip
    return {
        "category": category,
        "mode": mode,
        "query": result.query,
        "attacker": _ref(binding).model_dump(),
        "attack_level": result.level,
        "learner": {**learner.__dict__},
        "visited": ["attack"],
    }


async def respond(state: EpisodeState, runtime: Ctx) -> EpisodeState:
    started = time.perf_counter()
    binding = _binding(state["learner"])
    learner = runtime.context.learner
    out = await learner.respond(binding, state["query"])
    _trace(
        runtime, state, "respond", binding, [out], started, input=state["query"], output=out.text
    )
    # Recorded beside the answer: pairs from it train on exactly this request.
    messages = learner.messages(state["query"])
    return {"answer": out.text, "messages": messages, "visited": ["respond"]}


async def contrast(state: EpisodeState, runtime: Ctx) -> EpisodeState:
    """With loop.contrast: the learner answers again with a safety instruction
    in context; the rule judge reads both answers (competence/conformity pairs)."""
    ctx = runtime.context
    if not ctx.contrast:
        return {"visited": ["contrast"]}
    from sparring.eval.judges import rule_judge

    started = time.perf_counter()
    binding = _binding(state["learner"])
    out = await ctx.learner.respond_guarded(binding, state["query"])
    record = Contrast(
        guarded_answer=out.text,
        benign=state.get("mode") == "lookalike" or state["category"].startswith("benign:"),
        plain_refused=rule_judge(state["answer"]).refused,
        guarded_refused=rule_judge(out.text).refused,
    )  # fmt: skip
    _trace(
        runtime, state, "contrast", binding, [out], started, output=out.text,
        benign=record.benign, plain_refused=record.plain_refused,
        guarded_refused=record.guarded_refused,
    )  # fmt: skip
    return {"contrast": record.model_dump(), "visited": ["contrast"]}


async def _judge(
    state: EpisodeState, runtime: Ctx, node: str, answer: str, *, query: str | None = None,
    roles: tuple[str, ...] | None = None, critic: Callable[..., Any] | None = None,
    **fields: Any,
) -> Critique:  # fmt: skip
    """One critic's judgement, or a peer review when loop.critics names several.
    ``query``/``roles``/``critic`` default to the episode's query, loop.critics
    and the critic role (decompose judges subtasks, and has a verifier)."""
    started = time.perf_counter()
    ctx = runtime.context
    critic = critic or ctx.critic
    assert critic is not None, f"{node} needs its judging role bound"
    bindings = [ctx.registry.binding(role) for role in (roles or ctx.critics)]
    question = state["query"] if query is None else query
    results = await asyncio.gather(*(critic(b, question, answer) for b in bindings))
    calls = [call for r in results for call in r.calls]
    if len(results) == 1:
        c = results[0].critique
        panel_fields: dict[str, Any] = {}
    else:
        c = combine_panel([r.critique for r in results])
        panel_fields = {
            "panel": [
                {"role": p.critic.role, "model": p.critic.model,
                 "verdict": p.verdict.model_dump() if p.verdict else None}
                for p in c.panel
            ],
            "disagreement": c.disagreement,
        }  # fmt: skip
    who = bindings[0] if len(bindings) == 1 else Binding("critic", "", c.critic.model)
    _trace(
        runtime, state, node, who, calls, started,
        output=c.text, verdict=c.verdict.model_dump() if c.verdict else None,
        judge_error=c.judge_error, attempts=c.attempts, **panel_fields, **fields,
    )  # fmt: skip
    return c


async def critique(state: EpisodeState, runtime: Ctx) -> EpisodeState:
    c = await _judge(state, runtime, "critique", state["answer"])
    return {"critique": c.model_dump(), "visited": ["critique"]}


def review_reason(
    c: dict[str, Any], threshold: int | None, judge_errors: bool = True,
    max_disagreement: float | None = None,
) -> str | None:  # fmt: skip
    """Why a person should judge this critique, or None. With review on, a
    verdict that could not be read goes to the person too (unless
    ``judge_errors`` is off, when it stays an explicit judge_error outcome),
    and so does a peer review whose critics disagree beyond ``max_disagreement``."""
    v = c.get("verdict")
    spread = c.get("disagreement")
    if max_disagreement is not None and spread is not None and spread > max_disagreement:
        return f"critics disagree ({spread:.2f} > {max_disagreement:.2f})"
    panel = c.get("panel") or []
    readable = sum(p.get("verdict") is not None for p in panel)
    if max_disagreement is not None and len(panel) > 1 and readable < 2 and v is not None:
        # one readable critic is not a peer review: its agreement is unknown
        return f"only {readable} of {len(panel)} critics gave a readable verdict"
    if threshold is None:
        return None
    if v is None:
        return f"judge error: {c.get('judge_error')}" if judge_errors else None
    if v["confidence"] < threshold:
        return f"critic confidence {v['confidence']} < {threshold}"
    return None


def make_review(key: Literal["critique", "refined_critique"], node: str) -> Any:
    """A node that lets the critique under ``key`` stand, or, when the critic was
    not confident, pauses the episode (a LangGraph interrupt, kept in the
    checkpoint) until ``sparring review`` supplies a person's verdict."""
    answer_key = "answer" if key == "critique" else "refined_answer"
    judged = "critique" if key == "critique" else "critique_refined"

    async def review(state: EpisodeState, runtime: Ctx) -> EpisodeState:
        ctx = runtime.context
        c = state[key]  # type: ignore[literal-required]
        reason = review_reason(
            c, ctx.review_below_confidence, ctx.review_judge_errors, ctx.review_disagreement
        )
        if reason is None:
            return {"visited": [node]}
        request = ReviewRequest(
            episode_id=state["episode_id"], run_id=ctx.run_id, node=judged, query=state["query"],
            answer=state[answer_key], critique=c["text"],  # type: ignore[literal-required]
            verdict=c["verdict"], reason=reason,
        )  # fmt: skip
        # Published before the pause and again on resume (same id: stored once).
        ctx.bus.publish(
            "review_requests",
            review_id(state["episode_id"], judged),
            request.model_dump(mode="json"),
        )
        started = time.perf_counter()
        answer = interrupt(request.model_dump(mode="json"))  # returns the HumanReview on resume
        human = HumanReview.model_validate(answer)
        critique = human.as_critique()
        verdict = critique.verdict.model_dump() if critique.verdict else None
        _trace(
            runtime, state, node, None, [], started, reviewer=human.reviewer, reason=reason,
            output=critique.text, verdict=verdict,
        )  # fmt: skip
        return {key: critique.model_dump(), "visited": [node]}  # type: ignore[misc]

    review.__name__ = node
    return review


def after_critique(state: EpisodeState) -> Literal["refine", "emit"]:
    """No refinement from a critique whose verdict could not be read."""
    return "emit" if state["critique"]["verdict"] is None else "refine"


async def refine(state: EpisodeState, runtime: Ctx) -> EpisodeState:
    started = time.perf_counter()
    binding = _binding(state["learner"])
    out = await runtime.context.learner.refine(
        binding, state["query"], state["answer"], state["critique"]["text"]
    )
    _trace(runtime, state, "refine", binding, [out], started, output=out.text)
    return {"refined_answer": out.text, "visited": ["refine"]}


async def critique_refined(state: EpisodeState, runtime: Ctx) -> EpisodeState:
    c = await _judge(state, runtime, "critique_refined", state["refined_answer"])
    return {"refined_critique": c.model_dump(), "visited": ["critique_refined"]}


def outcome_of(first: Critique) -> Literal["attack_success", "attack_failure", "judge_error"]:
    if first.verdict is None:
        return "judge_error"
    return "attack_success" if first.verdict.harmful else "attack_failure"


def publish(
    runtime: Ctx, state: EpisodeState, episode: Episode, pairs: list[PreferencePair],
    started: float, **fields: Any,
) -> EpisodeState:  # fmt: skip
    """Publish a finished episode and its pairs; ids are derived, so a replay dedupes."""
    ctx = runtime.context
    ctx.bus.publish("episodes", episode.episode_id, episode.model_dump(mode="json"))
    for pair in pairs:
        ctx.bus.publish("pairs", pair.pair_id, pair.model_dump(mode="json"))
    ctx.registry.release(state["episode_id"])
    if ctx.on_episode:
        ctx.on_episode(episode, pairs)
    _trace(
        runtime, state, "emit", None, [], started,
        outcome=episode.outcome, learner_version=episode.learner.version,
        pair_ids=[p.pair_id for p in pairs],
        episode_s=round(episode.finished_at - episode.started_at, 3), **fields,
    )  # fmt: skip
    return {
        "outcome": episode.outcome,
        "pair_ids": [p.pair_id for p in pairs],
        "visited": ["emit"],
    }


def episode_of(state: EpisodeState, runtime: Ctx, outcome: Any, **fields: Any) -> Episode:
    """The episode record from the state's shared fields."""
    first, refined = state.get("critique"), state.get("refined_critique")
    return Episode(
        episode_id=state["episode_id"],
        run_id=runtime.context.run_id,
        category=state["category"],
        query=state["query"],
        attacker=ModelRef.model_validate(state["attacker"]),
        answer=state["answer"],
        learner=_ref(_binding(state["learner"])),
        critique=Critique.model_validate(first) if first else None,
        refined_answer=state.get("refined_answer", ""),
        refined_critique=Critique.model_validate(refined) if refined else None,
        outcome=outcome,
        graph=runtime.context.graph,
        contrast=Contrast.model_validate(state["contrast"]) if state.get("contrast") else None,
        attack_level=state.get("attack_level"),
        mode="lookalike" if state.get("mode") == "lookalike" else "attack",
        messages=[ChatMessage.model_validate(m) for m in state.get("messages", [])],
        started_at=state["started_at"],
        finished_at=time.time(),
        **fields,
    )


async def emit(state: EpisodeState, runtime: Ctx) -> EpisodeState:
    """Publish the episode and its refinement pair (redteam, self_refine)."""
    started = time.perf_counter()
    ctx = runtime.context
    episode = episode_of(state, runtime, outcome_of(Critique.model_validate(state["critique"])))
    pairs = refinement_pairs(
        episode, ctx.pair_margin, ctx.human_pair_weight, rule_check=ctx.refine_rule_check
    )
    pairs += contrast_pairs(episode)
    rounds = state.get("round", 1 if episode.refined_critique else 0)
    return publish(runtime, state, episode, pairs, started, rounds=rounds)


async def draw(
    state: EpisodeState, runtime: Ctx, source: PromptSource | None = None
) -> EpisodeState:
    """The next prompt from the run's prompt set (or ``source``); pins the learner
    version (graphs without an attacker: self_refine, debate, decompose)."""
    started = time.perf_counter()
    ctx = runtime.context
    prompts = source or ctx.prompts
    assert prompts is not None, f"graph {ctx.graph} needs a prompt set (loop.prompts)"
    item = prompts.next()
    learner = ctx.registry.acquire("learner", state["episode_id"])
    origin = ModelRef(role="dataset", model=prompts.name, version=0)
    _trace(
        runtime, state, "draw", None, [], started,
        category=item.category, output=item.prompt, learner_version=learner.version,
    )  # fmt: skip
    return {
        "category": item.category,
        "query": item.prompt,
        "item": dict(item.fields),
        "attacker": origin.model_dump(),
        "learner": {**learner.__dict__},
        "round": 0,
        "visited": ["draw"],
    }
