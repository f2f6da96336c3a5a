"""The learner: answers a query, and refines its answer from a critique."""

from __future__ import annotations

from sparring.agents.llm import Binding, Chat, Completion
from sparring.agents.prompts import render, template


class Learner:
    def __init__(self, chat: Chat, *, temperature: float, max_tokens: int) -> None:
        self._chat = chat
        self._temperature = temperature
        self._max_tokens = max_tokens

    async def respond(self, binding: Binding, query: str) -> Completion:
        messages = [
            {"role": "system", "content": template("learner_system")},
            {"role": "user", "content": query},
        ]
        return await self._chat(
            binding, messages, temperature=self._temperature, max_tokens=self._max_tokens
        )

    async def refine(self, binding: Binding, query: str, answer: str, critique: str) -> Completion:
        messages = [
            {"role": "system", "content": template("learner_system")},
            {
                "role": "user",
                "content": render("refine_user", query=query, answer=answer, critique=critique),
            },
        ]
        return await self._chat(
            binding, messages, temperature=self._temperature, max_tokens=self._max_tokens
        )
