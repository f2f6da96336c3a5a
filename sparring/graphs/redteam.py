"""The default loop: attack -> respond -> critique -> refine -> critique(refined) -> emit."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from sparring.graphs.nodes import (
    EpisodeState,
    LoopContext,
    after_critique,
    attack,
    critique,
    critique_refined,
    emit,
    refine,
    respond,
)

ROLES = ("attacker", "learner", "critic")


def build(checkpointer: Any = None) -> Any:
    g = StateGraph(EpisodeState, context_schema=LoopContext)
    g.add_node("attack", attack)
    g.add_node("respond", respond)
    g.add_node("critique", critique)
    g.add_node("refine", refine)
    g.add_node("critique_refined", critique_refined)
    g.add_node("emit", emit)
    g.add_edge(START, "attack")
    g.add_edge("attack", "respond")
    g.add_edge("respond", "critique")
    g.add_conditional_edges("critique", after_critique)
    g.add_edge("refine", "critique_refined")
    g.add_edge("critique_refined", "emit")
    g.add_edge("emit", END)
    return g.compile(checkpointer=checkpointer)


# For LangGraph's own tooling (langgraph.json / `langgraph dev`).
graph = build()
