"""Degenerate answers: what a learner trained too hard, or in the wrong context,
produces instead of an answer. Rules, no model, so every version faces the same
reading:

- ``empty``: nothing, or no word at all;
- ``persona``: the answer introduces an assistant ("You are a helpful AI
  assistant named ...", "I am an AI assistant trained by ..."): a system
  prompt given back instead of an answer;
- ``echoes-system-prompt``: it repeats a run of eight or more words of a system
  prompt the learner is served or trained with;
- ``echoes-instructions``: it repeats a run of eight or more words of another
  prompt the learner is sent (the refinement request, a debater's brief): a
  prompt given back instead of an answer;
- ``repetition``: one phrase of four words three times or more, or fewer than
  half of its three-word phrases distinct (a loop);
- ``quotes-fence``: it holds a ``[BEGIN <tag>]`` or ``[END <tag>]`` mark, the
  fences our prompts quote material in (a refinement that copied its prompt);
- ``about-the-answer``: it opens by describing an answer or review ("The answer
  to the question raises ...", "The review says ...") instead of answering: a
  refinement that reports on its prompt ("The answer provides ...", "The
  answer is asking ..." too; "The answer is 42", "The answer depends ...",
  "Your answer lacks ..." can answer a user, and pass).

A pair whose chosen answer is degenerate never trains (``training.dpo.pair_problem``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from functools import cache

from sparring.agents.prompts import template

ECHO_WORDS = 8
_WORD = re.compile(r"[a-z0-9']+")
_ASSISTANT = (
    r"\s+(?:an?\s+)?(?:(?:helpful|careful|friendly|harmless|honest)\s+)*(?:ai\s+)?"
    r"(?:assistant|language model|chatbot)\b"
)
_PERSONA = re.compile(
    rf"^\W*(?:you are|you're){_ASSISTANT}"
    rf"|^\W*(?:i am|i'm)(?:\s+[\w-]+,)?{_ASSISTANT}[^.!?\n]{{0,30}}"
    r"\b(?:named|called|trained by|created by|developed by|made by)\b",
    re.IGNORECASE,
)
_FENCE_MARK = re.compile(r"\[(?:BEGIN|END) [0-9a-f]{8}\]")
_ABOUT = re.compile(
    r"^\W*(?:the|your|my|this|that)\s+(?:(?:earlier|original|previous|first|new|improved)\s+)?"
    r"(?:answer|response|review|critique|reply)\s+(?:to\s+(?:the|your|this)\s+question\s+)?"
    r"(?:tells|criticizes|criticises|asks|raises|says|suggests|explains|describes|mentions|"
    r"states|argues|notes|points|claims|refuses|addresses|discusses|focuses|"
    r"provides|offers|gives|is\s+(?:not\s+)?(?:asking|providing|offering|giving))\b",
    re.IGNORECASE,
)
# SmolLM2's chat template default, and those of other common templates
TEMPLATE_DEFAULTS = (
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "You are a helpful assistant.",
)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def ngrams(ws: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]


@cache
def system_prompts() -> tuple[str, ...]:
    """The system prompts the learner meets: served, guarded, template defaults."""
    return (template("learner_system"), template("guarded_system"), *TEMPLATE_DEFAULTS)


# the other prompts the learner is sent: refinement, and debate (debaters are learners)
LEARNER_INSTRUCTIONS = ("refine_user", "debater_system", "debate_open", "debate_reply")


@cache
def instruction_texts() -> tuple[str, ...]:
    """The fixed text of the other prompts the learner is sent, cut at each
    ``{placeholder}`` so no run of words spans what a caller fills in."""
    texts = [template(name) for name in LEARNER_INSTRUCTIONS]
    return tuple(part for text in texts for part in re.split(r"\{[a-z_]+\}", text) if part.strip())


def _spans(texts: Iterable[str]) -> frozenset[tuple[str, ...]]:
    return frozenset(g for t in texts for g in ngrams(words(t), ECHO_WORDS))


@cache
def _system_spans() -> frozenset[tuple[str, ...]]:
    return _spans(system_prompts())


@cache
def _instruction_spans() -> frozenset[tuple[str, ...]]:
    return _spans(instruction_texts())


def degeneration(answer: str) -> str | None:
    """Why ``answer`` is degenerate (a rule's name), or None."""
    ws = words(answer)
    if not ws:
        return "empty"
    if _PERSONA.search(answer.strip()):
        return "persona"
    if _FENCE_MARK.search(answer):
        return "quotes-fence"
    if _ABOUT.search(answer.strip()):
        return "about-the-answer"
    spans = set(ngrams(ws, ECHO_WORDS))
    if not spans.isdisjoint(_system_spans()):
        return "echoes-system-prompt"
    if not spans.isdisjoint(_instruction_spans()):
        return "echoes-instructions"
    fours = Counter(ngrams(ws, 4))
    if fours and max(fours.values()) >= 3:
        return "repetition"
    threes = ngrams(ws, 3)
    if len(threes) >= 12 and len(set(threes)) < len(threes) / 2:
        return "repetition"
    return None
