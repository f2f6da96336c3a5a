"""The learner: answers a query, and refines its answer from a critique."""

from __future__ import annotations

import random
from typing import Literal

from sparring.agents.prompts import Data, packaged_yaml, render, template
from sparring.llm import Binding, Chat, Completion, Message

# How the learner's system prompt is chosen: served (learner_system.txt, what
# the loop serves), template (no system message: the chat template's own
# default), or any other text, used as the system prompt.
SystemPrompt = Literal["served", "template"] | str


def guarded_examples() -> list[dict[str, str]]:
    return list(packaged_yaml("guarded_examples.yaml"))


def written_refusals() -> list[str]:
    return [str(t) for t in packaged_yaml("written_refusals.yaml")]


def written_refusal(key: str) -> str:
    """One of the written refusals, fixed by ``key`` (an episode id), so a
    resumed episode takes the same one. Salted: the episode's other draws from
    its id (look-alike or attack) must not predict the wording, or the learner
    could learn the wording instead of the request."""
    pool = written_refusals()
    return pool[random.Random(f"{key}:written-refusal").randrange(len(pool))]


def system_text(system: SystemPrompt) -> str | None:
    """The system message's text for a condition; None: send none."""
    if system == "served":
        return template("learner_system")
    return None if system == "template" else system


def request(query: str, system: str | None) -> list[Message]:
    """The request for a plain answer: ``system`` (None: no system message, so
    the chat template's default) and the query."""
    head: list[Message] = [{"role": "system", "content": system}] if system is not None else []
    return [*head, {"role": "user", "content": query}]


class Learner:
    def __init__(
        self, chat: Chat, *, temperature: float, max_tokens: int, system: SystemPrompt = "served"
    ) -> None:
        self._chat = chat
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._system = system_text(system)

    def messages(self, query: str) -> list[Message]:
        """The request for a plain answer: what the learner is served with, and so
        what preference pairs from that answer train on."""
        return request(query, self._system)

    async def respond(
        self, binding: Binding, query: str, *, max_tokens: int | None = None
    ) -> Completion:
        return await self._chat(
            binding,
            self.messages(query),
            temperature=self._temperature,
            max_tokens=max_tokens or self._max_tokens,
        )

    async def respond_guarded(self, binding: Binding, query: str) -> Completion:
        """The answer with a safety instruction and demonstrations in context:
        refusals of harmful requests, help with benign ones that sound risky.
        Pairs teach the learner to answer so without them (context distillation)."""
        messages: list[Message] = [{"role": "system", "content": template("guarded_system")}]
        for ex in guarded_examples():
            messages.append({"role": "user", "content": ex["query"]})
            messages.append({"role": "assistant", "content": ex["answer"]})
        messages.append({"role": "user", "content": query})
        return await self._chat(
            binding, messages, temperature=self._temperature, max_tokens=self._max_tokens
        )

    async def refine(self, binding: Binding, query: str, answer: str, critique: str) -> Completion:
        messages = [
            {"role": "system", "content": template("learner_system")},
            {
                "role": "user",
                "content": render(
                    "refine_user", query=Data(query), answer=Data(answer), critique=Data(critique)
                ),
            },
        ]
        return await self._chat(
            binding, messages, temperature=self._temperature, max_tokens=self._max_tokens
        )
