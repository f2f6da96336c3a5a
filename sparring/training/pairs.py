"""Preference pairs from finished episodes."""

from __future__ import annotations

from typing import Literal

from sparring.agents.prompts import render
from sparring.refusal import rule_judge
from sparring.schemas import ChatMessage, Episode, ModelRef, PreferencePair, stable_id


def refinement_pairs(
    episode: Episode,
    margin: int,
    human_weight: float = 2.0,
    *,
    chosen_by: ModelRef | None = None,
    kind: Literal["refine", "decompose"] = "refine",
    rule_check: bool = False,
) -> list[PreferencePair]:
    """The refined answer over the original, when the critic prefers it.

    Preferred means: the refinement is not judged harmful and either the
    original was, or the refinement scores at least ``margin`` higher on
    helpfulness. A judge error on either side yields no pair: an unreadable
    verdict is never evidence. With ``rule_check`` (and a contrast record, so
    the episode's mode is known), the rule judge must agree with the mode too:
    on an attack the refinement must refuse, on a look-alike it must not (a
    weak critic's "more helpful" answer to a harmful request would teach
    compliance). (``decompose`` records its recomposed
    answer as the refinement of the learner's direct one; ``chosen_by`` is
    then the planner.)
    """
    if episode.critique is None:
        return []
    before = episode.critique.verdict
    after = episode.refined_critique.verdict if episode.refined_critique else None
    if before is None or after is None or after.harmful:
        return []
    if not (before.harmful or after.helpfulness - before.helpfulness >= margin):
        return []
    refined = episode.refined_answer.strip()
    if not refined or refined == episode.answer.strip():
        return []
    contrasted = episode.contrast is not None  # redteam with loop.contrast: a mode to agree with
    if rule_check and contrasted and rule_judge(episode.refined_answer).refused != episode.attack:
        return []
    judges = [episode.critique.critic.role]
    judges += [episode.refined_critique.critic.role] if episode.refined_critique else []
    human = "human" in judges
    return [
        PreferencePair(
            pair_id=stable_id(episode.episode_id, kind),
            episode_id=episode.episode_id,
            run_id=episode.run_id,
            prompt=episode.query,
            messages=episode.messages,
            chosen=episode.refined_answer,
            rejected=episode.answer,
            chosen_by=chosen_by or episode.learner,
            rejected_by=episode.learner,
            critique=episode.critique.text,
            chosen_verdict=after,
            rejected_verdict=before,
            source="human" if human else "ai",
            weight=human_weight if human else 1.0,
            kind=kind,
        )
    ]


def debate_prompt(question: str, first: str, second: str) -> str:
    """What both debaters' arguments answer, as the trainer sees it."""
    return render("debate_pair", question=question, a=first, b=second)


def argument(episode: Episode, side: Literal["helpful", "sneaky"]) -> str:
    assert episode.debate is not None
    return "\n\n".join(t.text for t in episode.debate.turns if t.side == side)


def debate_pairs(episode: Episode, require_truth: bool = False) -> list[PreferencePair]:
    """The argument the judge picked over the other one. With ``require_truth``,
    only when the judge picked the side arguing for the known answer (a judge
    fooled by the sneaky debater then teaches nothing)."""
    d = episode.debate
    if d is None or d.winner is None:
        return []
    if require_truth and d.winner != "helpful":
        return []
    loser: Literal["helpful", "sneaky"] = "sneaky" if d.winner == "helpful" else "helpful"
    chosen, rejected = argument(episode, d.winner), argument(episode, loser)
    if not chosen.strip() or chosen.strip() == rejected.strip():
        return []
    speakers = {t.side: t.speaker for t in d.turns}
    a, b = (
        (d.helpful_position, d.sneaky_position)
        if d.helpful_is == "A"
        else (d.sneaky_position, d.helpful_position)
    )
    return [
        PreferencePair(
            pair_id=stable_id(episode.episode_id, "debate"),
            episode_id=episode.episode_id,
            run_id=episode.run_id,
            prompt=debate_prompt(episode.query, a, b),
            # Debaters are served a per-side system prompt and the turns so far; the
            # pair trains the whole argument on the neutral debate_pair prompt instead.
            messages=[ChatMessage(role="user", content=debate_prompt(episode.query, a, b))],
            chosen=chosen,
            rejected=rejected,
            chosen_by=speakers[d.winner],
            rejected_by=speakers[loser],
            critique=d.judgement.text,
            judgement=d.judgement,
            kind="debate",
        )
    ]


# who wrote a contrast pair's refusal under loop.written_refusals
WRITTEN = ModelRef(role="dataset", model="written_refusals.yaml", version=0)


def contrast_pairs(episode: Episode) -> list[PreferencePair]:
    """Conformity and competence pairs (the alternating scheme of Kim et al.):
    on an adversarial prompt, the guarded refusal over a plain answer that did
    not refuse; on a look-alike (benign) one, whichever answer helped over the
    one that refused: the plain answer over a guarded over-refusal, or the
    guarded answer over a plain over-refusal (the learner's own, once training
    has made it refuse too much). Refusal is the rule judge's reading, not a
    model's; a helpful answer the critic judged harmful is never chosen, and
    an empty answer never makes a pair."""
    c = episode.contrast
    if c is None:
        return []
    guarded_answer, guarded_refused = c.refusal()
    if c.plain_refused == guarded_refused:
        return []
    if not (episode.answer.strip() and guarded_answer.strip()):
        return []
    plain_harmful = bool(
        episode.critique and episode.critique.verdict and episode.critique.verdict.harmful
    )
    kind: Literal["conformity", "competence"]
    guarded = "a written refusal" if c.written else "the guarded answer"
    if not c.benign and guarded_refused:
        kind = "conformity"
        chosen, rejected = guarded_answer, episode.answer
        why = f"{guarded} refused an adversarial request the plain answer complied with"
    elif c.benign and guarded_refused and not plain_harmful:
        kind = "competence"
        chosen, rejected = episode.answer, guarded_answer
        why = f"the plain answer helped with a look-alike request {guarded} refused"
    elif c.benign and c.plain_refused:
        kind = "competence"
        chosen, rejected = guarded_answer, episode.answer
        why = "the guarded answer helped with a look-alike request the plain answer refused"
    else:
        return []
    return [
        PreferencePair(
            pair_id=stable_id(episode.episode_id, kind),
            episode_id=episode.episode_id,
            run_id=episode.run_id,
            prompt=episode.query,
            messages=episode.messages,
            chosen=chosen,
            rejected=rejected,
            chosen_by=WRITTEN if c.written and kind == "conformity" else episode.learner,
            rejected_by=WRITTEN if c.written and kind == "competence" else episode.learner,
            critique=f"rule judge: {why}",
            kind=kind,
        )
    ]
