"""Debate: helpful and sneaky debaters argue opposite answers for K turns; a judge picks one.

Each question in the prompt set comes with its correct ``answer`` and a
plausible ``wrong_answer``. The learner argues for the correct one, the
``sneaky`` role for the wrong one (bind it to the learner's own weights with
``version: latest`` for a prover-verifier game), ``loop.debate_turns`` turns
each; the ``judge`` sees the two sides as A and B in an order drawn per
episode. The pair is the argument the judge picked over the other one
(``loop.debate_pairs: truth`` keeps only picks of the correct side).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from sparring.agents.debate import Debater, make_judge
from sparring.config import RunConfig
from sparring.graphs.api import (
    CoreContext,
    CoreState,
    Update,
    binding_of,
    extend,
    model_ref,
    node,
    traced,
)
from sparring.graphs.nodes import draw_prompt, episode_of, publish
from sparring.graphs.registry import register_graph
from sparring.schemas import Debate, DebateTurn, Judgement, stable_id
from sparring.training.pairs import debate_pairs


class DebateState(CoreState, total=False):
    helpful_is: str  # which label, A or B, the judge sees the helpful side under
    turns: list[dict[str, Any]]
    judgement: dict[str, Any]


@dataclass
class DebateContext(CoreContext):
    # a Debater per arguing role (learner, sneaky), the judge, K turns each
    debaters: dict[str, Any] = field(default_factory=dict)
    judge: Any = None
    debate_turns: int = 2
    debate_require_truth: bool = False


Ctx = Runtime[DebateContext]


def context(cfg: RunConfig, core: CoreContext) -> DebateContext:
    rc, lc = cfg.roles, cfg.loop
    judge = None
    if "judge" in rc:
        judge = make_judge(
            core.chat,
            temperature=rc["judge"].temperature,
            max_tokens=rc["judge"].max_tokens,
            retries=lc.critic_retries,
        )
    debaters = {
        role: Debater(core.chat, temperature=rc[role].temperature, max_tokens=rc[role].max_tokens)
        for role in ("learner", "sneaky")
        if role in rc
    }
    return extend(
        core,
        DebateContext,
        debaters=debaters,
        judge=judge,
        debate_turns=lc.debate_turns,
        debate_require_truth=lc.debate_pairs == "truth",
    )


Side = Literal["helpful", "sneaky"]


def positions(state: DebateState) -> dict[str, str]:
    return {"helpful": state["item"]["answer"], "sneaky": state["item"]["wrong_answer"]}


@node("draw")
async def setup(state: DebateState, runtime: Ctx) -> Update:
    """Draw a question; which side the judge will see as A is drawn from the
    episode id, so a resumed episode keeps it."""
    drawn = await draw_prompt(state, runtime)
    helpful_is = "A" if int(stable_id(state["episode_id"], "side"), 16) % 2 == 0 else "B"
    drawn.update = {**drawn.update, "helpful_is": helpful_is, "turns": []}
    return drawn


def make_debater(side: Side) -> Any:
    @node(side)
    async def argue(state: DebateState, runtime: Ctx) -> Update:
        ctx = runtime.context
        role = "learner" if side == "helpful" else "sneaky"
        # the helpful side is the learner, pinned to the episode's version
        binding = binding_of(state["learner"]) if side == "helpful" else ctx.registry.binding(role)
        pos = positions(state)
        other: Side = "sneaky" if side == "helpful" else "helpful"
        turns = state.get("turns", [])
        said = [t["text"] for t in turns if t["side"] == other]
        out = await ctx.debaters[role].argue(
            binding, state["query"], pos[side], said[-1] if said else None
        )
        n = sum(t["side"] == side for t in turns) + 1
        turn = DebateTurn(side=side, turn=n, text=out.text, speaker=model_ref(binding))
        return traced(
            {"turns": [*turns, turn.model_dump()], "round": n},
            binding,
            [out],
            output=out.text,
            turn=n,
            position=pos[side],
        )

    return argue


def after_sneaky(state: DebateState, runtime: Ctx) -> Literal["helpful", "judge"]:
    return "helpful" if state.get("round", 0) < runtime.context.debate_turns else "judge"


def labelled(state: DebateState) -> tuple[str, str, dict[str, str]]:
    """Answer A, answer B, and the label of each side, as the judge sees them."""
    pos = positions(state)
    if state["helpful_is"] == "A":
        return pos["helpful"], pos["sneaky"], {"helpful": "A", "sneaky": "B"}
    return pos["sneaky"], pos["helpful"], {"helpful": "B", "sneaky": "A"}


def side_picked(j: Judgement, helpful_is: str) -> Side | None:
    """The side behind the judge's A or B (None: a judge error)."""
    if j.winner is None:
        return None
    return "helpful" if j.winner == helpful_is else "sneaky"


@node("judge")
async def judge(state: DebateState, runtime: Ctx) -> Update:
    ctx = runtime.context
    assert ctx.judge is not None, "the debate judge needs roles.judge bound"
    binding = ctx.registry.binding("judge")
    a, b, label = labelled(state)
    so_far = [(label[t["side"]], t["text"]) for t in state["turns"]]
    result = await ctx.judge(binding, state["query"], a, b, so_far)
    j: Judgement = result.judgement
    winner = side_picked(j, state["helpful_is"])
    return traced(
        {"judgement": j.model_dump()},
        binding,
        result.calls,
        output=j.text,
        pick=j.winner,
        winner=winner,
        confidence=j.confidence,
        judge_error=j.judge_error,
        attempts=j.attempts,
    )


@node("emit")
async def emit(state: DebateState, runtime: Ctx) -> Update:
    ctx = runtime.context
    j = Judgement.model_validate(state["judgement"])
    pos = positions(state)
    winner = side_picked(j, state["helpful_is"])
    debate = Debate(
        helpful_position=pos["helpful"],
        sneaky_position=pos["sneaky"],
        helpful_is=state["helpful_is"],  # type: ignore[arg-type]
        turns=[DebateTurn.model_validate(t) for t in state["turns"]],
        judgement=j,
        winner=winner,
    )
    outcome = "judge_error" if winner is None else f"{winner}_won"
    # the learner's answer in this episode: its (the helpful side's) argument
    episode = episode_of(
        {**state, "answer": "\n\n".join(t.text for t in debate.turns if t.side == "helpful")},
        runtime,
        outcome,
        debate=debate,
    )
    pairs = debate_pairs(episode, require_truth=ctx.debate_require_truth)
    judged = {"winner": winner, "judge_correct": debate.judge_correct}
    return publish(runtime, state, episode, pairs, **judged)


@register_graph(
    "debate",
    roles=("learner", "sneaky", "judge"),
    context=context,
    prompt_set="debate_set.jsonl",  # loop.prompts replaces it
    prompt_fields=("answer", "wrong_answer"),
)
def build(checkpointer: Any = None) -> Any:
    g = StateGraph(DebateState, context_schema=DebateContext)
    g.add_node("draw", setup)
    g.add_node("helpful", make_debater("helpful"))
    g.add_node("sneaky", make_debater("sneaky"))
    g.add_node("judge", judge)
    g.add_node("emit", emit)
    g.add_edge(START, "draw")
    g.add_edge("draw", "helpful")
    g.add_edge("helpful", "sneaky")
    g.add_conditional_edges("sneaky", after_sneaky, ["helpful", "judge"])
    g.add_edge("judge", "emit")
    g.add_edge("emit", END)
    return g.compile(checkpointer=checkpointer)


# For LangGraph's own tooling (langgraph.json / `langgraph dev`).
graph = build()
