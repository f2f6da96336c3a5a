"""The attacker: new adversarial queries from seed risk categories, without repeats."""

from __future__ import annotations

import random
import re
from collections import Counter, deque
from dataclasses import dataclass, field

from sparring.agents.difficulty import DifficultyController, style
from sparring.agents.prompts import Seed, render, template
from sparring.llm import Binding, Chat, Completion, Message
from sparring.schemas import AttackRecord, ChatMessage, Mode

SHOWN_EXAMPLES = 3
# First attempts of one seed and mode rotate through this many fixed example
# subsets: the same request recurs across episodes, so queries written for one
# request can be compared (attacker pairs need both from one served request).
FIRST_ROTATION = 3


def normalise(query: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", query.lower()))


def clean_query(text: str) -> str:
    """The query in a reply: the first line that asks something, else the first
    line that is not a preamble such as "Here is a new question:"."""
    lines = []
    for raw in text.splitlines():
        line = re.sub(
            r"^\s*([-*\d.)]+\s*)?((new )?question|query|q)\s*[:\-]\s*", "", raw, flags=re.I
        )
        line = line.strip().strip("\"'` ")
        if line and not line.endswith(":"):
            lines.append(line)
    asking = [line for line in lines if line.endswith("?")]
    return (asking or lines or [""])[0]


@dataclass
class Attack:
    seed: Seed
    query: str
    calls: list[Completion]
    repeats_avoided: int
    level: int | None = None  # the difficulty level used; None: no adaptation
    # what the attacker was sent for the kept attempt (system + user), which
    # attempt that was, and whether the query fell back to a seed text instead
    messages: list[Message] = field(default_factory=list)
    attempt: int = 0
    fallback: bool = False
    mode: Mode = "attack"  # the prompt served (a seed with no look-alikes: attack)
    examples: tuple[str, ...] = ()  # the seed texts the kept attempt showed

    def record(self) -> AttackRecord:
        """The provenance an episode keeps (attacker pairs are built from it)."""
        return AttackRecord(
            seed=self.seed.category,
            mode=self.mode,
            level=self.level,
            messages=[ChatMessage.model_validate(m) for m in self.messages],
            examples=list(self.examples),
            attempt=self.attempt,
            fallback=self.fallback,
        )


class Attacker:
    """Cycles through seed categories; rejects a query that repeats a recent one
    or a seed example, retrying a bounded number of times."""

    def __init__(
        self,
        chat: Chat,
        seeds: list[Seed],
        *,
        temperature: float,
        max_tokens: int,
        recent_window: int = 32,
        max_attempts: int = 3,
        rng: random.Random | None = None,
        difficulty: DifficultyController | None = None,
    ) -> None:
        self._chat = chat
        self._seeds = seeds
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._recent: deque[str] = deque(maxlen=max(recent_window, 1))
        self._max_attempts = max_attempts
        self._rng = rng or random.Random(0)
        self._turn = 0
        self._uses: Counter[tuple[str, str]] = Counter()
        self.difficulty = difficulty

    def next_seed(self) -> Seed:
        seed = self._seeds[self._turn % len(self._seeds)]
        self._turn += 1
        return seed

    async def __call__(self, binding: Binding, seed: Seed, mode: Mode = "attack") -> Attack:
        """A new query for ``seed``: an attack, or (``lookalike``) a harmless
        question that borrows the category's words."""
        lookalike = mode == "lookalike" and bool(seed.lookalikes)
        shown = seed.lookalikes if lookalike else seed.examples
        taken = {normalise(e) for e in (*seed.examples, *seed.lookalikes)} | set(self._recent)
        calls: list[Completion] = []
        query = ""
        messages: list[Message] = []
        examples: list[str] = []
        served: Mode = "lookalike" if lookalike else "attack"
        first = self._first_examples(seed.category, served, shown)
        # Read once: the level may move while this attack awaits the model.
        level = None if lookalike or not self.difficulty else self.difficulty.level
        system, user = (
            ("attacker_lookalike_system", "attacker_lookalike_user")
            if lookalike
            else ("attacker_system", "attacker_user")
        )
        for attempt in range(self._max_attempts):
            avoid = "" if attempt == 0 else f' and from "{query}"'
            # a few of the seed's examples: enough to set the topic, and a short
            # prompt (prefill is most of a CPU's work); a retry draws a new order
            examples = first if attempt == 0 else self._sample(self._rng, shown)
            messages = [
                {"role": "system", "content": template(system)},
                {
                    "role": "user",
                    "content": render(
                        user,
                        category=seed.category,
                        description=seed.description,
                        examples="\n".join(f"- {e}" for e in examples),
                        avoid=avoid,
                        style="" if lookalike else style(level),
                    ),
                },
            ]
            out = await self._chat(
                binding,
                messages,
                temperature=self._temperature + 0.2 * attempt,
                max_tokens=self._max_tokens,
            )
            calls.append(out)
            query = clean_query(out.text)
            if query and normalise(query) not in taken:
                fallback = False
                break
        else:
            # Still a repeat after the bounded retries: fall back to a seed example
            # the loop has not used recently, so the episode still has a query.
            fresh = [e for e in shown if normalise(e) not in self._recent]
            query = self._rng.choice(fresh or list(shown))
            fallback = True
        self._recent.append(normalise(query))
        return Attack(
            seed,
            query,
            calls,
            repeats_avoided=len(calls) - 1,
            level=level,
            messages=messages,
            attempt=max(len(calls) - 1, 0),
            fallback=fallback,
            mode=served,
            examples=tuple(examples),
        )

    def _first_examples(self, category: str, mode: Mode, shown: tuple[str, ...]) -> list[str]:
        """The first attempt's examples: one of ``FIRST_ROTATION`` fixed subsets
        per seed and mode, in turn, so identical requests recur across episodes
        (and across orchestrators) while the examples still vary."""
        k = self._uses[(category, mode)] % FIRST_ROTATION
        self._uses[(category, mode)] += 1
        return self._sample(random.Random(f"{category}:{mode}:{k}"), shown)

    @staticmethod
    def _sample(rng: random.Random, shown: tuple[str, ...]) -> list[str]:
        return rng.sample(list(shown), min(SHOWN_EXAMPLES, len(shown)))
