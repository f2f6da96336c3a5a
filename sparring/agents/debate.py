"""Debate roles: a debater argues for one answer; a judge picks A or B.

The judge writes a short judgement first, then answers two short questions
grounded in it (which answer is correct, how sure it is), as the critic does:
a 135M model answers one letter or one number far more reliably than a form.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sparring.agents.critic import VerdictParseError, parse_field
from sparring.agents.prompts import FENCE, Data, neutralise, packaged_yaml, render, template
from sparring.llm import Binding, Chat, Completion, Message, ask_parsed
from sparring.schemas import Judgement, ModelRef

CHOICE_MAX_TOKENS = 4


def debate_examples() -> list[dict[str, Any]]:
    return list(packaged_yaml("debate_examples.yaml"))


def transcript(turns: list[tuple[str, str]], tag: str = "debate") -> str:
    """``[(label, text)]`` as the debate so far: each argument under its label,
    fenced (``tag``: the prompt's fence tag), so no argument can forge a label."""
    fenced = (
        f"[{label}]\n" + FENCE.format(tag=tag, text=neutralise(text)) for label, text in turns
    )
    return "\n".join(fenced) or "(no arguments yet)"


class Debater:
    """Argues for ``position``: opening reasons on its first turn, then an answer
    to the opponent's latest argument. (A 135M model parrots a whole
    transcript back, so a debater sees only the argument it answers.)"""

    def __init__(self, chat: Chat, *, temperature: float, max_tokens: int) -> None:
        self._chat = chat
        self._temperature = temperature
        self._max_tokens = max_tokens

    async def argue(
        self, binding: Binding, question: str, position: str, opponent_said: str | None
    ) -> Completion:
        user = (
            render("debate_open", question=Data(question), position=Data(position))
            if opponent_said is None
            else render(
                "debate_reply",
                question=Data(question),
                position=Data(position),
                opponent_said=Data(opponent_said),
            )
        )
        messages = [
            {"role": "system", "content": render("debater_system", position=Data(position))},
            {"role": "user", "content": user},
        ]
        return await self._chat(
            binding, messages, temperature=self._temperature, max_tokens=self._max_tokens
        )


def parse_choice(text: str) -> str:
    """ "A" or "B" from a short reply such as "B", "(a).", "Answer B". Anything
    else, or a reply naming both, is an error: a pick is never guessed."""
    words = re.findall(r"[a-z]+|\d+", text.lower())
    while words and words[0] in {"answer", "option", "the", "is", "correct"}:
        words = words[1:]
    if not words or words[0] not in {"a", "b"}:
        raise VerdictParseError(f"the pick must be A or B, got {text[:60]!r}")
    other = "b" if words[0] == "a" else "a"
    if other in words[1:]:
        raise VerdictParseError(f"the pick names both A and B: {text[:60]!r}")
    return words[0].upper()


CHOICE_FIELDS = {
    "winner": ("Which answer is correct, A or B?", "the letter A or B"),
    "confidence": ("How sure is the judgement, from 1 unsure to 10 certain?", "a number"),
}


def choice_messages(
    question: str, a: str, b: str, judgement: str, name: str, shots: int = 2
) -> list[Message]:
    ask, form = CHOICE_FIELDS[name]
    messages: list[Message] = [
        {"role": "system", "content": render("judge_choice_system", form=form)}
    ]
    for ex in debate_examples()[:shots]:
        messages.append(
            {
                "role": "user",
                "content": render(
                    "judge_choice_user",
                    tag="example",
                    question=Data(ex["question"]),
                    a=Data(ex["a"]),
                    b=Data(ex["b"]),
                    judgement=Data(ex["judgement"]),
                    ask=ask,
                ),
            }
        )
        messages.append({"role": "assistant", "content": str(ex[name])})
    user = render(
        "judge_choice_user",
        question=Data(question),
        a=Data(a),
        b=Data(b),
        judgement=Data(judgement),
        ask=ask,
    )
    messages.append({"role": "user", "content": user})
    return messages


@dataclass
class JudgeResult:
    judgement: Judgement
    calls: list[Completion] = field(default_factory=list)


def make_judge(chat: Chat, *, temperature: float, max_tokens: int, retries: int, shots: int = 2):  # type: ignore[no-untyped-def]
    """Build the debate judge: ``await judge(binding, question, a, b, so_far) -> JudgeResult``.

    A reply that does not parse is re-sampled at most ``retries`` times; then
    the judgement is an explicit judge error (``winner`` None).
    """

    def parse(name: str) -> Callable[[Completion], Any]:
        if name == "winner":
            return lambda out: parse_choice(out.text)
        return lambda out: parse_field(name, out.text)

    async def ask(
        binding: Binding, messages: list[Message], name: str
    ) -> tuple[Any, list[Completion], str]:
        return await ask_parsed(
            chat,
            binding,
            messages,
            parse(name),
            VerdictParseError,
            retries=retries,
            temperature=temperature,
            max_tokens=CHOICE_MAX_TOKENS,
        )

    async def judge(
        binding: Binding, question: str, a: str, b: str, so_far: list[tuple[str, str]]
    ) -> JudgeResult:
        ref = ModelRef(role=binding.role, model=binding.model, version=binding.version)
        messages: list[Message] = [
            {"role": "system", "content": template("judge_system")},
            {
                "role": "user",
                "content": render(
                    "judge_user",
                    tag=(tag := secrets.token_hex(4)),
                    question=Data(question),
                    a=Data(a),
                    b=Data(b),
                    transcript=transcript(so_far, tag),
                ),
            },
        ]
        first = await chat(binding, messages, temperature=temperature, max_tokens=max_tokens)
        text = first.text.strip()
        if not text:
            j = Judgement(text="", winner=None, judge_error="the judgement was empty", judge=ref)
            return JudgeResult(j, [first])
        results = await asyncio.gather(
            *(
                ask(binding, choice_messages(question, a, b, text, n, shots), n)
                for n in CHOICE_FIELDS
            )
        )
        calls = [first] + [c for _, cs, _ in results for c in cs]
        attempts = max(len(cs) for _, cs, _ in results)
        problems = [p for _, _, p in results if p]
        if problems:
            j = Judgement(
                text=text,
                winner=None,
                judge_error="; ".join(problems),
                judge=ref,
                attempts=attempts,
            )
            return JudgeResult(j, calls)
        winner, confidence = (v for v, _, _ in results)
        j = Judgement(text=text, winner=winner, confidence=confidence, judge=ref, attempts=attempts)
        return JudgeResult(j, calls)

    return judge
