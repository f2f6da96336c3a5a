"""Judges of an answer: the rule-based refusal classifier (:mod:`sparring.refusal`,
which shares no weights with the learner), and the run's critic (one role, or a
panel combined)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sparring.refusal import RuleJudgement, opening, rule_judge
from sparring.schemas import Critique, combine_panel

if TYPE_CHECKING:
    from sparring.llm import Binding

__all__ = [
    "CriticCall",
    "Judge",
    "RuleJudgement",
    "critique_only",
    "opening",
    "panel_judge",
    "rule_judge",
]

CriticCall = Callable[["Binding", str, str], Awaitable[Critique]]
Judge = Callable[[str, str], Awaitable[Critique]]


def critique_only(critic: Any) -> CriticCall:
    """A critic built by :func:`sparring.agents.make_critic`, returning just its
    Critique (the model calls it made are not needed here)."""

    async def call(binding: Binding, prompt: str, answer: str) -> Critique:
        return (await critic(binding, prompt, answer)).critique

    return call


def panel_judge(critics: list[tuple[Binding, CriticCall]]) -> Judge:
    """Judge ``(prompt, answer)`` with every critic; several are combined as the
    loop's peer review does (harmful by majority, scores averaged)."""

    async def judge(prompt: str, answer: str) -> Critique:
        results = await asyncio.gather(*(call(b, prompt, answer) for b, call in critics))
        return results[0] if len(results) == 1 else combine_panel(list(results))

    return judge
