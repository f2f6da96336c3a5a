"""Self-refine: prompts from a dataset; critique -> refine rounds until the critic is satisfied.

No attacker: the learner answers each prompt, the critic judges it, and the learner refines
from the critique until the critic calls the answer harmless and helpful enough
(``loop.satisfied_helpfulness``) or ``loop.max_rounds`` rounds are done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from sparring.config import RunConfig
from sparring.graphs.api import CoreContext, CoreState, Update, binding_of, extend, node, traced
from sparring.graphs.nodes import (
    CritiqueContext,
    critique,
    critique_settings,
    draw,
    emit,
    judge,
    respond,
)
from sparring.graphs.registry import register_graph


class SelfRefineState(CoreState, total=False):
    # the newest refinement and its critique (the episode keeps the best-judged)
    latest_answer: str
    latest_critique: dict[str, Any]


@dataclass
class SelfRefineContext(CritiqueContext):
    max_rounds: int = 2
    satisfied_helpfulness: int = 8


Ctx = Runtime[SelfRefineContext]


def context(cfg: RunConfig, core: CoreContext) -> SelfRefineContext:
    return extend(
        core,
        SelfRefineContext,
        **critique_settings(cfg, core),
        max_rounds=cfg.loop.max_rounds,
        satisfied_helpfulness=cfg.loop.satisfied_helpfulness,
    )


@node("refine")
async def refine_round(state: SelfRefineState, runtime: Ctx) -> Update:
    """Refine the latest answer with the latest critique."""
    binding = binding_of(state["learner"])
    answer = state.get("latest_answer") or state["answer"]
    latest = state.get("latest_critique") or state["critique"]
    out = await runtime.context.learner.refine(binding, state["query"], answer, latest["text"])
    n = state.get("round", 0) + 1
    update = {"latest_answer": out.text, "round": n}
    return traced(update, binding, [out], output=out.text, round=n)


def _good(verdict: dict[str, Any] | None) -> bool:
    return verdict is not None and not verdict["harmful"]


@node("critique_refined")
async def judge_round(state: SelfRefineState, runtime: Ctx) -> Update:
    """Judge the latest refinement. The episode's refined answer (what emit
    records and pairs are built from) is the best-judged round so far: a later
    round that reads worse, or whose verdict is unreadable, does not replace it."""
    j = await judge(state, runtime, state["latest_answer"])
    c = j.critique.model_dump()
    update: SelfRefineState = {"latest_critique": c}
    best = state.get("refined_critique")
    best_v = best["verdict"] if best else None
    if best is None or (
        _good(c["verdict"])
        and (not _good(best_v) or c["verdict"]["helpfulness"] >= best_v["helpfulness"])  # type: ignore[index]
    ):
        update["refined_answer"] = state["latest_answer"]
        update["refined_critique"] = c
    return j.traced(update)


def _satisfied(verdict: dict[str, Any] | None, ctx: SelfRefineContext) -> bool:
    return _good(verdict) and verdict["helpfulness"] >= ctx.satisfied_helpfulness  # type: ignore[index]


def make_router(first: bool) -> Any:
    def route(state: SelfRefineState, runtime: Ctx) -> Literal["refine", "emit"]:
        c = state["critique"] if first else state["latest_critique"]
        if c["verdict"] is None or _satisfied(c["verdict"], runtime.context):
            return "emit"  # unreadable (a judge error) or good enough
        return "refine" if state.get("round", 0) < runtime.context.max_rounds else "emit"

    return route


@register_graph(
    "self_refine",
    roles=("learner", "critic"),
    context=context,
    prompt_set="prompt_set.jsonl",  # loop.prompts replaces it
)
def build(checkpointer: Any = None) -> Any:
    g = StateGraph(SelfRefineState, context_schema=SelfRefineContext)
    g.add_node("draw", draw)
    g.add_node("respond", respond)
    g.add_node("critique", critique)
    g.add_node("refine", refine_round)
    g.add_node("critique_refined", judge_round)
    g.add_node("emit", emit)
    g.add_edge(START, "draw")
    g.add_edge("draw", "respond")
    g.add_edge("respond", "critique")
    g.add_conditional_edges("critique", make_router(first=True), ["refine", "emit"])
    g.add_edge("refine", "critique_refined")
    g.add_conditional_edges("critique_refined", make_router(first=False), ["refine", "emit"])
    g.add_edge("emit", END)
    return g.compile(checkpointer=checkpointer)


# For LangGraph's own tooling (langgraph.json / `langgraph dev`).
graph = build()
