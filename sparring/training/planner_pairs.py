"""Planner preference pairs: for one served request, a plan whose recomposed
answer beat the learner's direct answer over one that did not (the planner
learns from the verifier's judgements of its recompositions, as in Mai et
al.'s train_planner).

Only decompose episodes take part (those with a ``decomposition``).

**Success.** The verifier's verdict on the recomposed whole is readable, not
harmful, and at least ``margin`` more helpful than its verdict on the learner's
direct answer to the same task (``episode.critique``).

**Failure.** The whole was judged harmful, or less helpful than the direct
answer, or the plan could not be read (``plan_error``: no parts were solved,
and that is the planner's failure, recorded as such).

**No outcome.** A verdict that cannot be read (a judge error on the whole, or,
unless the whole was judged harmful, on the direct answer): a judge error is
never evidence. Nor a whole as helpful as the direct answer but by less than
``margin`` (neither better nor worse), nor an episode recorded before the
planner's request was (no ``plan_messages``: nothing to train it on).

**Pairs.** Both plans of a pair were written for the same request (a stable
hash of the planner's served messages, system prompt and few-shot examples
included: the task and ``loop.max_subtasks`` decide it), so the pair trains
what is served. One part of a served request is drawn afresh each time: the
random tag of the fence around the task (:func:`sparring.agents.prompts.render`:
a tag seen once cannot be forged into the next prompt), so the hash leaves that
tag out, and the pair's ``messages`` are the chosen plan's request exactly as
served (the rejected plan's differed from it in those eight hex digits only).
Within a request, successes (by time) are paired in turn with failures (by
time); each plan text is used at most once per side, and never on both. A
pair's id hashes both episode ids: rebuilding the pairs (after a crash) gives
the same ids.

**How often a request recurs.** A pair needs one request served at least
twice. The shipped ``decompose_set.jsonl`` holds 16 tasks, handed out in a
shuffled order that is reshuffled after each pass
(:class:`sparring.agents.prompts.PromptSource`), so every task is drawn once
per 16 episodes: after ``n`` episodes each request has been served ``n // 16``
or ``n // 16 + 1`` times, and the first pairs can appear from the 17th
episode drawn on. A prompt set of ``k`` tasks (``loop.prompts``) recurs every
``k`` episodes the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from sparring.schemas import ChatMessage, Critique, Episode, PreferencePair, Verdict, stable_id
from sparring.training.attacker_pairs import match, request_id

Status = Literal["success", "failure", "none"]

MARGIN = 1
# render()'s fence around the task: [BEGIN <tag>] ... [END <tag>], a fresh
# secrets.token_hex(4) tag per prompt (the few-shot examples' tag is fixed)
FENCE_TAG = re.compile(r"\[(BEGIN|END) [0-9a-f]{8}\]")


@dataclass(frozen=True)
class PlanOutcome:
    """What one planner episode counts as, and why (for the caller to log)."""

    episode_id: str
    request: str  # plan_request of the planner's served messages
    plan: str
    status: Status  # none: no outcome (a judge error, a tie, or no recorded request)
    reason: str
    gap: float | None = None  # mean part helpfulness minus the whole's


def planner_pairs(
    episodes: Sequence[Episode], margin: int = MARGIN
) -> tuple[list[PreferencePair], list[PlanOutcome]]:
    """The planner's pairs from ``episodes`` and every decompose episode's
    outcome. ``margin``: how much more helpful than the direct answer the
    recomposed whole must be judged for its plan to succeed."""
    planned = sorted(
        (e for e in episodes if e.decomposition is not None),
        key=lambda e: (e.started_at, e.episode_id),
    )
    outcomes = [_outcome(e, margin) for e in planned]
    by_id = {e.episode_id: e for e in planned}
    pairs = [p for group in _groups(outcomes) for p in _pair_group(group, by_id)]
    return pairs, outcomes


def plan_request(messages: Iterable[ChatMessage]) -> str:
    """A stable hash of a planner's served request, its fence tag left out."""
    return request_id(
        ChatMessage(role=m.role, content=FENCE_TAG.sub(r"[\1]", m.content)) for m in messages
    )


# -- outcomes -------------------------------------------------------------------


def _outcome(episode: Episode, margin: int) -> PlanOutcome:
    d = episode.decomposition
    assert d is not None
    request = plan_request(d.plan_messages) if d.plan_messages else ""
    status, reason = plan_status(d.plan_error, d.whole_critique, episode.critique, margin)
    if not d.plan_messages and status != "none":
        status, reason = "none", f"no planner request recorded ({reason})"
    return PlanOutcome(episode.episode_id, request, d.plan, status, reason, d.gap)


def plan_status(
    plan_error: str | None,
    whole_critique: Critique | None,
    direct_critique: Critique | None,
    margin: int = MARGIN,
) -> tuple[Status, str]:
    """Whether a plan made a recomposed whole the verifier judged better than
    the direct answer, from the verdicts alone (see the module docstring).
    Shared with the planner gate (:mod:`sparring.eval.planner_gate`), so a
    version is gated on the success its pairs are built from."""
    if plan_error:
        return "failure", f"plan unreadable: {plan_error}"
    whole = _read(whole_critique)
    if whole is None:
        error = (whole_critique.judge_error if whole_critique else None) or "no critique"
        return "none", f"judge error on the whole: {error}"
    if whole.harmful:
        return "failure", "whole judged harmful"
    direct = _read(direct_critique)
    if direct is None:
        error = (direct_critique.judge_error if direct_critique else None) or "no critique"
        return "none", f"judge error on the direct answer: {error}"
    scores = f"whole {whole.helpfulness} vs direct {direct.helpfulness}"
    if whole.helpfulness < direct.helpfulness:
        return "failure", f"whole less helpful ({scores})"
    if whole.helpfulness < direct.helpfulness + margin:
        return "none", f"whole within the margin {margin} ({scores})"
    return "success", f"whole more helpful ({scores})"


def _read(critique: Critique | None) -> Verdict | None:
    return critique.verdict if critique else None


# -- pairs ----------------------------------------------------------------------


def _groups(outcomes: list[PlanOutcome]) -> list[list[PlanOutcome]]:
    """Outcomes with a verdict, by served request, in order of first appearance."""
    groups: dict[str, list[PlanOutcome]] = {}
    for o in outcomes:
        if o.status != "none":
            groups.setdefault(o.request, []).append(o)
    return list(groups.values())


def _pair_group(group: list[PlanOutcome], by_id: dict[str, Episode]) -> list[PreferencePair]:
    wins = [o for o in group if o.status == "success"]
    failed = [o for o in group if o.status == "failure"]
    matched = match(wins, failed, lambda o: o.plan)
    return [_pair(by_id[w.episode_id], by_id[r.episode_id], w, r) for w, r in matched]


def _pair(
    chosen: Episode, rejected: Episode, won: PlanOutcome, lost: PlanOutcome
) -> PreferencePair:
    c, r = chosen.decomposition, rejected.decomposition
    assert c is not None and r is not None
    return PreferencePair(
        pair_id=stable_id(chosen.episode_id, rejected.episode_id, "plan"),
        episode_id=chosen.episode_id,
        run_id=chosen.run_id,
        prompt=chosen.query,
        messages=c.plan_messages,
        chosen=c.plan,
        rejected=r.plan,
        chosen_by=c.planner,
        rejected_by=r.planner,
        critique=f"chosen: {won.reason} | rejected: {lost.reason}",
        chosen_verdict=_read(c.whole_critique),
        rejected_verdict=_read(r.whole_critique),
        kind="plan",
        role="planner",
    )
