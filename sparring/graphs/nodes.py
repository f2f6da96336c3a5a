"""Shared graph nodes: each takes ``(state, runtime)`` and returns a partial update.

Clients, the registry, the bus and the trace logger arrive through the
runtime context (:class:`~sparring.graphs.api.CoreContext`, or
:class:`CritiqueContext` for the graphs whose critic judges the learner),
never through module globals.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from sparring.agents import make_critic
from sparring.agents.critic import make_intent_judge
from sparring.agents.prompts import PromptSource
from sparring.bus.streams import EPISODES, PAIRS, REVIEW_REQUESTS
from sparring.config import RunConfig
from sparring.graphs.api import (
    CoreContext,
    CoreState,
    Traced,
    Update,
    binding_of,
    extend,
    model_ref,
    node,
    traced,
)
from sparring.llm import Binding, Completion
from sparring.schemas import (
    ChatMessage,
    Critique,
    Episode,
    HumanReview,
    ModelRef,
    PreferencePair,
    ReviewRequest,
    combine_panel,
    review_id,
)
from sparring.training.pairs import refinement_pairs


@dataclass
class CritiqueContext(CoreContext):
    """The core, and a critic (or a panel) judging the learner, with a person's
    review of the verdicts it was unsure of (redteam, self_refine, decompose)."""

    critic: Callable[..., Any] | None = None
    # the roles that judge: one critic, or a peer-review panel
    critics: tuple[str, ...] = ("critic",)
    pair_margin: int = 2
    human_pair_weight: float = 2.0
    refine_rule_check: bool = False  # refinement pairs must agree with the rule judge
    # pause for a person's verdict when the critic's confidence is below this
    review_below_confidence: int | None = None
    review_judge_errors: bool = True
    review_disagreement: float | None = None


def critic_for(cfg: RunConfig, chat: Any, role: str) -> Any:
    """The critic agent with ``role``'s sampling settings (None: not bound)."""
    rc = cfg.roles
    if role not in rc:
        return None
    return make_critic(
        chat,
        temperature=rc[role].temperature,
        max_tokens=rc[role].max_tokens,
        retries=cfg.loop.critic_retries,
        shots=cfg.loop.critic_shots,
    )


def intent_judge_for(cfg: RunConfig, chat: Any) -> Any:
    """The intent check of ``loop.intent_judge`` with that role's sampling
    settings (None: not configured)."""
    role = cfg.loop.intent_judge
    if role is None or role not in cfg.roles:
        return None
    temperature = cfg.roles[role].temperature
    return make_intent_judge(chat, temperature=temperature, retries=cfg.loop.critic_retries)


def critique_settings(cfg: RunConfig, core: CoreContext) -> dict[str, Any]:
    """The :class:`CritiqueContext` fields beyond the core, from the config."""
    lc = cfg.loop
    return {
        "critic": critic_for(cfg, core.chat, "critic"),
        "critics": tuple(lc.critics),
        "pair_margin": lc.pair_margin,
        "human_pair_weight": lc.human_pair_weight,
        "refine_rule_check": lc.refine_rule_check,
        "review_below_confidence": lc.review_below_confidence,
        "review_judge_errors": lc.review_judge_errors,
        "review_disagreement": lc.review_disagreement,
    }


def context(cfg: RunConfig, core: CoreContext) -> CritiqueContext:
    """The context of a graph made of these nodes (a user's graph can name it)."""
    return extend(core, CritiqueContext, **critique_settings(cfg, core))


# Runtime is invariant in its context: shared nodes take any graph's (a
# CritiqueContext, or for respond/refine/draw any CoreContext)
Ctx = Runtime[Any]


@node("respond")
async def respond(state: CoreState, runtime: Ctx) -> Update:
    binding = binding_of(state["learner"])
    learner = runtime.context.learner
    out = await learner.respond(binding, state["query"])
    # Recorded beside the answer: pairs from it train on exactly this request.
    messages = learner.messages(state["query"])
    update = {"answer": out.text, "messages": messages}
    return traced(update, binding, [out], input=state["query"], output=out.text)


@dataclass
class Judged:
    """One judgement and what its trace event says (:func:`judge`)."""

    critique: Critique
    binding: Binding
    calls: Sequence[Completion]
    started: float
    fields: dict[str, Any] = field(default_factory=dict)

    def traced(self, update: Mapping[str, Any], **more: Any) -> Traced:
        return traced(update, self.binding, self.calls, **self.fields, **more)


async def judge(
    state: Mapping[str, Any],
    runtime: Runtime[Any],
    answer: str,
    *,
    query: str | None = None,
    roles: tuple[str, ...] | None = None,
    critic: Callable[..., Any] | None = None,
) -> Judged:
    """One critic's judgement, or a peer review when loop.critics names several.
    ``query``/``roles``/``critic`` default to the episode's query, loop.critics
    and the critic role (decompose judges subtasks, and has a verifier)."""
    started = time.perf_counter()
    ctx = runtime.context
    critic = critic or ctx.critic
    assert critic is not None, "judging needs its role bound"
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
                {
                    "role": p.critic.role,
                    "model": p.critic.model,
                    "verdict": p.verdict.model_dump() if p.verdict else None,
                }
                for p in c.panel
            ],
            "disagreement": c.disagreement,
        }
    who = bindings[0] if len(bindings) == 1 else Binding("critic", "", c.critic.model)
    fields = {
        "output": c.text,
        "verdict": c.verdict.model_dump() if c.verdict else None,
        "judge_error": c.judge_error,
        "attempts": c.attempts,
        **panel_fields,
    }
    return Judged(c, who, calls, started, fields)


@node("critique")
async def critique(state: CoreState, runtime: Ctx) -> Update:
    j = await judge(state, runtime, state["answer"])
    return j.traced({"critique": j.critique.model_dump()})


def review_reason(
    c: dict[str, Any],
    threshold: int | None,
    judge_errors: bool = True,
    max_disagreement: float | None = None,
) -> str | None:
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


def make_review(key: Literal["critique", "refined_critique"], name: str) -> Any:
    """A node that lets the critique under ``key`` stand, or, when the critic was
    not confident, pauses the episode (a LangGraph interrupt, kept in the
    checkpoint) until ``sparring review`` supplies a person's verdict."""
    answer_key: Literal["answer", "refined_answer"] = (
        "answer" if key == "critique" else "refined_answer"
    )
    judged = "critique" if key == "critique" else "critique_refined"

    @node(name)
    async def review(state: CoreState, runtime: Ctx) -> Update:
        ctx = runtime.context
        c = state[key]
        reason = review_reason(
            c, ctx.review_below_confidence, ctx.review_judge_errors, ctx.review_disagreement
        )
        if reason is None:
            return {}
        request = ReviewRequest(
            episode_id=state["episode_id"],
            run_id=ctx.run_id,
            node=judged,
            query=state["query"],
            answer=state[answer_key],
            critique=c["text"],
            verdict=c["verdict"],
            reason=reason,
        )
        # Published before the pause and again on resume (same id: stored once).
        REVIEW_REQUESTS.publish(ctx.bus, review_id(state["episode_id"], judged), request)
        answer = interrupt(request.model_dump(mode="json"))  # returns the HumanReview on resume
        human = HumanReview.model_validate(answer)
        critique = human.as_critique()
        verdict = critique.verdict.model_dump() if critique.verdict else None
        return traced(
            {key: critique.model_dump()},
            None,
            [],
            reviewer=human.reviewer,
            reason=reason,
            output=critique.text,
            verdict=verdict,
        )

    return review


def after_critique(state: CoreState) -> Literal["refine", "emit"]:
    """No refinement from a critique whose verdict could not be read."""
    return "emit" if state["critique"]["verdict"] is None else "refine"


@node("refine")
async def refine(state: CoreState, runtime: Ctx) -> Update:
    binding = binding_of(state["learner"])
    out = await runtime.context.learner.refine(
        binding, state["query"], state["answer"], state["critique"]["text"]
    )
    return traced({"refined_answer": out.text}, binding, [out], output=out.text)


@node("critique_refined")
async def critique_refined(state: CoreState, runtime: Ctx) -> Update:
    j = await judge(state, runtime, state["refined_answer"])
    return j.traced({"refined_critique": j.critique.model_dump()})


def outcome_of(first: Critique) -> Literal["attack_success", "attack_failure", "judge_error"]:
    if first.verdict is None:
        return "judge_error"
    return "attack_success" if first.verdict.harmful else "attack_failure"


def publish(
    runtime: Runtime[Any],
    state: Mapping[str, Any],
    episode: Episode,
    pairs: list[PreferencePair],
    **fields: Any,
) -> Traced:
    """Publish a finished episode and its pairs; ids are derived, so a replay dedupes."""
    ctx = runtime.context
    EPISODES.publish(ctx.bus, episode.episode_id, episode)
    for pair in pairs:
        PAIRS.publish(ctx.bus, pair.pair_id, pair)
    ctx.registry.release(state["episode_id"])
    if ctx.on_episode:
        ctx.on_episode(episode, pairs)
    pair_ids = [p.pair_id for p in pairs]
    return traced(
        {"outcome": episode.outcome, "pair_ids": pair_ids},
        None,
        [],
        outcome=episode.outcome,
        learner_version=episode.learner.version,
        pair_ids=pair_ids,
        episode_s=round(episode.finished_at - episode.started_at, 3),
        **fields,
    )


def episode_of(
    state: Mapping[str, Any], runtime: Runtime[Any], outcome: Any, **fields: Any
) -> Episode:
    """The episode record from the core state's fields (``fields``: a graph's own)."""
    first, refined = state.get("critique"), state.get("refined_critique")
    return Episode(
        episode_id=state["episode_id"],
        run_id=runtime.context.run_id,
        category=state["category"],
        query=state["query"],
        attacker=ModelRef.model_validate(state["attacker"]),
        answer=state["answer"],
        learner=model_ref(binding_of(state["learner"])),
        critique=Critique.model_validate(first) if first else None,
        refined_answer=state.get("refined_answer", ""),
        refined_critique=Critique.model_validate(refined) if refined else None,
        outcome=outcome,
        graph=runtime.context.graph,
        messages=[ChatMessage.model_validate(m) for m in state.get("messages", [])],
        started_at=state["started_at"],
        finished_at=time.time(),
        **fields,
    )


def refinement_episode(
    state: Mapping[str, Any], runtime: Runtime[Any], **fields: Any
) -> tuple[Episode, list[PreferencePair]]:
    """The episode and its refinement pair (redteam, self_refine)."""
    ctx = runtime.context
    first = Critique.model_validate(state["critique"])
    episode = episode_of(state, runtime, outcome_of(first), **fields)
    pairs = refinement_pairs(
        episode, ctx.pair_margin, ctx.human_pair_weight, rule_check=ctx.refine_rule_check
    )
    return episode, pairs


def rounds_of(state: Mapping[str, Any], episode: Episode) -> int:
    return state.get("round", 1 if episode.refined_critique else 0)


@node("emit")
async def emit(state: CoreState, runtime: Ctx) -> Update:
    """Publish the episode and its refinement pair."""
    episode, pairs = refinement_episode(state, runtime)
    return publish(runtime, state, episode, pairs, rounds=rounds_of(state, episode))


async def draw_prompt(
    state: Mapping[str, Any], runtime: Runtime[Any], source: PromptSource | None = None
) -> Traced:
    """The next prompt from the run's prompt set (or ``source``); pins the learner
    version. Traced as ``draw`` whichever node calls it."""
    ctx = runtime.context
    prompts = source or ctx.prompts
    assert prompts is not None, f"graph {ctx.graph} needs a prompt set (loop.prompts)"
    item = prompts.next()
    learner = ctx.registry.acquire("learner", state["episode_id"])
    origin = ModelRef(role="dataset", model=prompts.name, version=0)
    update = {
        "category": item.category,
        "query": item.prompt,
        "item": dict(item.fields),
        "attacker": origin.model_dump(),
        "learner": {**learner.__dict__},
        "round": 0,
    }
    out = traced(
        update,
        None,
        [],
        category=item.category,
        output=item.prompt,
        learner_version=learner.version,
    )
    out.name = "draw"
    return out


@node("draw")
async def draw(state: CoreState, runtime: Ctx) -> Update:
    """The next prompt from the run's prompt set (graphs without an attacker:
    self_refine, debate, decompose)."""
    return await draw_prompt(state, runtime)
