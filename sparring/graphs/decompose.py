"""Decompose: planner splits a task, learner solves parts, critic scores them, verifier the whole.

The learner also answers the whole task directly; the ``verifier`` judges both
the direct answer and the planner's recomposition of the solved parts. The
pair is the recomposed answer over the direct one when the verifier prefers
it (amplify, then distil). The episode records each part's score and the
whole's apart, so the gap (do harmless, helpful parts make a harmless,
helpful whole?) can be measured per version (``sparring trace``, summary).
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass
from typing import Annotated, Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from sparring.agents.planner import Planner
from sparring.config import RunConfig
from sparring.graphs.api import (
    CoreContext,
    CoreState,
    Update,
    binding_of,
    extend,
    model_ref,
    node,
    trace,
    traced,
)
from sparring.graphs.nodes import (
    CritiqueContext,
    critic_for,
    critique_settings,
    draw,
    episode_of,
    judge,
    make_review,
    outcome_of,
    publish,
    respond,
)
from sparring.graphs.registry import register_graph
from sparring.schemas import ChatMessage, Critique, Decomposition, ModelRef, Part
from sparring.training.pairs import refinement_pairs


class DecomposeState(CoreState, total=False):
    # a solve task gets index/subtask; its part comes back in parts
    plan: str
    planner: dict[str, Any]
    plan_error: str | None
    plan_messages: list[dict[str, str]]
    subtasks: list[str]
    index: int
    subtask: str
    parts: Annotated[list[dict[str, Any]], operator.add]


@dataclass
class DecomposeContext(CritiqueContext):
    # the planner, the verifier (a critic bound to roles.verifier)
    planner: Any = None
    verifier: Any = None
    max_subtasks: int = 3


Ctx = Runtime[DecomposeContext]


def context(cfg: RunConfig, core: CoreContext) -> DecomposeContext:
    rc = cfg.roles
    planner = None
    if "planner" in rc:
        planner = Planner(
            core.chat,
            temperature=rc["planner"].temperature,
            max_tokens=rc["planner"].max_tokens,
            retries=cfg.loop.critic_retries,
        )
    return extend(
        core,
        DecomposeContext,
        **critique_settings(cfg, core),
        planner=planner,
        verifier=critic_for(cfg, core.chat, "verifier"),
        max_subtasks=cfg.loop.max_subtasks,
    )


@node("verify_direct")
async def verify_direct(state: DecomposeState, runtime: Ctx) -> Update:
    """The verifier's judgement of the learner's direct answer to the whole task."""
    j = await judge(
        state, runtime, state["answer"], roles=("verifier",), critic=runtime.context.verifier
    )
    return j.traced({"critique": j.critique.model_dump()})


@node("plan")
async def plan(state: DecomposeState, runtime: Ctx) -> Update:
    ctx = runtime.context
    binding = ctx.registry.binding("planner")
    p = await ctx.planner.plan(binding, state["query"], ctx.max_subtasks)
    update = {
        "plan": p.text,
        "planner": model_ref(binding).model_dump(),
        "subtasks": p.subtasks,
        "plan_error": p.error,
        "plan_messages": p.messages,  # the request a planner pair trains
    }
    return traced(update, binding, p.calls, output=p.text, subtasks=p.subtasks, plan_error=p.error)


def fan_out(state: DecomposeState) -> Any:
    """One solve task per subtask (LangGraph runs them side by side), or
    straight to emit when the plan could not be read."""
    if state.get("plan_error") or not state.get("subtasks"):
        return "emit"
    return [
        Send(
            "solve",
            {
                "episode_id": state["episode_id"],
                "learner": state["learner"],
                "query": state["query"],
                "index": i,
                "subtask": sub,
            },
        )
        for i, sub in enumerate(state["subtasks"])
    ]


@node("solve")
async def solve(state: DecomposeState, runtime: Ctx) -> Update:
    """The learner answers one subtask on its own (it sees only its part), and
    the critic (or the loop.critics panel) scores that part: two events, each timed here."""
    started = time.perf_counter()
    binding = binding_of(state["learner"])
    out = await runtime.context.learner.respond(binding, state["subtask"])
    trace(
        runtime,
        state,
        "solve",
        binding,
        [out],
        started,
        input=state["subtask"],
        output=out.text,
        part=state["index"],
    )
    j = await judge(state, runtime, out.text, query=state["subtask"])
    trace(
        runtime, state, "judge_part", j.binding, j.calls, j.started, **j.fields, part=state["index"]
    )
    part = Part(
        index=state["index"],
        subtask=state["subtask"],
        answer=out.text,
        solver=model_ref(binding),
        critique=j.critique,
    )
    return {"parts": [part.model_dump()]}


def ordered_parts(state: DecomposeState) -> list[Part]:
    # solve tasks finish in any order; a replayed one is recorded once
    by_index = {p["index"]: Part.model_validate(p) for p in state.get("parts", [])}
    return [by_index[i] for i in sorted(by_index)]


@node("recompose")
async def recompose(state: DecomposeState, runtime: Ctx) -> Update:
    ctx = runtime.context
    serving = ctx.registry.binding("planner")
    parts = ordered_parts(state)
    out = await ctx.planner.recompose(
        serving, state["query"], [(p.subtask, p.answer) for p in parts]
    )
    update = {"refined_answer": out.text}
    return traced(update, serving, [out], output=out.text, parts=len(parts))


@node("verify")
async def verify(state: DecomposeState, runtime: Ctx) -> Update:
    """The verifier's judgement of the recomposed whole."""
    j = await judge(
        state,
        runtime,
        state["refined_answer"],
        roles=("verifier",),
        critic=runtime.context.verifier,
    )
    return j.traced({"refined_critique": j.critique.model_dump()})


@node("emit")
async def emit(state: DecomposeState, runtime: Ctx) -> Update:
    ctx = runtime.context
    first = Critique.model_validate(state["critique"])
    whole = state.get("refined_critique")
    d = Decomposition(
        plan=state.get("plan", ""),
        planner=ModelRef.model_validate(state["planner"]),
        parts=ordered_parts(state),
        plan_error=state.get("plan_error"),
        plan_messages=[ChatMessage.model_validate(m) for m in state.get("plan_messages", [])],
        whole_answer=state.get("refined_answer", ""),
        whole_critique=Critique.model_validate(whole) if whole else None,
    )
    episode = episode_of(state, runtime, outcome_of(first), decomposition=d)
    pairs = refinement_pairs(
        episode, ctx.pair_margin, ctx.human_pair_weight, chosen_by=d.planner, kind="decompose"
    )
    return publish(
        runtime,
        state,
        episode,
        pairs,
        parts=len(d.parts),
        parts_harmful=d.parts_harmful,
        part_helpfulness=d.part_helpfulness,
        gap=d.gap,
        harmless_parts_harmful_whole=d.harmless_parts_harmful_whole,
    )


@register_graph(
    "decompose",
    roles=("planner", "learner", "critic", "verifier"),
    context=context,
    prompt_set="decompose_set.jsonl",  # loop.prompts replaces it
)
def build(checkpointer: Any = None) -> Any:
    g = StateGraph(DecomposeState, context_schema=DecomposeContext)
    g.add_node("draw", draw)
    g.add_node("respond", respond)
    g.add_node("verify_direct", verify_direct)
    # A verdict the verifier was unsure of waits for a person (sparring review).
    g.add_node("review", make_review("critique", "review"))
    g.add_node("plan", plan)
    g.add_node("solve", solve)
    g.add_node("recompose", recompose)
    g.add_node("verify", verify)
    g.add_node("review_refined", make_review("refined_critique", "review_refined"))
    g.add_node("emit", emit)
    g.add_edge(START, "draw")
    g.add_edge("draw", "respond")
    g.add_edge("respond", "verify_direct")
    g.add_edge("verify_direct", "review")
    g.add_edge("review", "plan")
    g.add_conditional_edges("plan", fan_out, ["solve", "emit"])
    g.add_edge("solve", "recompose")
    g.add_edge("recompose", "verify")
    g.add_edge("verify", "review_refined")
    g.add_edge("review_refined", "emit")
    g.add_edge("emit", END)
    return g.compile(checkpointer=checkpointer)


# For LangGraph's own tooling (langgraph.json / `langgraph dev`).
graph = build()
