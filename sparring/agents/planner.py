"""The decompose planner: splits a task into subtasks, and recomposes the
solver's answers into one answer to the whole task."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sparring.agents.prompts import Data, neutralise, packaged_yaml, render, template
from sparring.llm import Binding, Chat, Completion, Message, ask_parsed


class PlanParseError(ValueError):
    """The planner's output holds no usable list of subtasks."""


_ITEM = re.compile(r"^\s*(?:\d{1,2}\s*[.):-]|[-*•])\s*(.+?)\s*$")


def parse_plan(text: str, max_parts: int, truncated: bool = False) -> list[str]:
    """Numbered or bulleted lines as subtasks (at most ``max_parts``, repeats
    dropped). Fewer than two is an error: that is not a decomposition. When the
    reply was cut off at its token limit, its last line is cut too: dropped."""
    parts: list[str] = []
    lines = text.splitlines()
    for line in lines[:-1] if truncated and len(lines) > 1 else lines:
        m = _ITEM.match(line)
        if m and m.group(1).lower() not in {p.lower() for p in parts}:
            parts.append(m.group(1))
    if len(parts) < 2:
        raise PlanParseError(
            f"expected a numbered list of 2 to {max_parts} subtasks, got {text[:80]!r}"
        )
    return parts[:max_parts]


@dataclass(frozen=True)
class Plan:
    """A plan and the request it answered (``messages``: what a planner pair
    trains). ``error``: the plan could not be read (``subtasks`` is empty)."""

    subtasks: list[str]
    text: str
    calls: list[Completion]
    error: str | None
    messages: list[Message]


def plan_examples() -> list[dict[str, Any]]:
    return list(packaged_yaml("plan_examples.yaml"))


class Planner:
    def __init__(self, chat: Chat, *, temperature: float, max_tokens: int, retries: int) -> None:
        self._chat = chat
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._retries = retries

    async def plan(self, binding: Binding, task: str, max_parts: int) -> Plan:
        """A plan that does not parse is re-sampled (the same request) at most
        ``retries`` times, then reported as an error."""
        messages: list[Message] = [
            {"role": "system", "content": render("planner_system", n=max_parts)}
        ]
        for ex in plan_examples():
            user = render("plan_user", tag="example", task=Data(ex["task"]))
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": ex["plan"]})
        messages.append({"role": "user", "content": render("plan_user", task=Data(task))})
        parts, calls, problem = await ask_parsed(
            self._chat,
            binding,
            messages,
            # a reply cut off at the token limit has its last line cut too
            lambda out: parse_plan(out.text, max_parts, out.completion_tokens >= self._max_tokens),
            PlanParseError,
            retries=self._retries,
            temperature=self._temperature,
            max_tokens=self._max_tokens,
        )
        return Plan(parts or [], calls[-1].text, calls, problem or None, messages)

    async def recompose(
        self, binding: Binding, task: str, parts: list[tuple[str, str]]
    ) -> Completion:
        listed = "\n".join(f"- {neutralise(sub)}: {neutralise(ans)}" for sub, ans in parts)
        messages: list[Message] = [
            {"role": "system", "content": template("recompose_system")},
            {
                "role": "user",
                "content": render("recompose_user", task=Data(task), parts=Data(listed)),
            },
        ]
        return await self._chat(
            binding, messages, temperature=self._temperature, max_tokens=self._max_tokens
        )
