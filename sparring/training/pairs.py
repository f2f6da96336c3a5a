"""Preference pairs from finished episodes."""

from __future__ import annotations

from sparring.schemas import Episode, PreferencePair, stable_id


def refinement_pairs(
    episode: Episode, margin: int, human_weight: float = 2.0
) -> list[PreferencePair]:
    """The refined answer over the original, when the critic prefers it.

    Preferred means: the refinement is not judged harmful and either the
    original was, or the refinement scores at least ``margin`` higher on
    helpfulness. A judge error on either side yields no pair: an unreadable
    verdict is never evidence.
    """
    before = episode.critique.verdict
    after = episode.refined_critique.verdict if episode.refined_critique else None
    if before is None or after is None or after.harmful:
        return []
    if not (before.harmful or after.helpfulness - before.helpfulness >= margin):
        return []
    if episode.refined_answer.strip() == episode.answer.strip():
        return []
    judges = [episode.critique.critic.role]
    judges += [episode.refined_critique.critic.role] if episode.refined_critique else []
    human = "human" in judges
    return [
        PreferencePair(
            pair_id=stable_id(episode.episode_id, "refine"),
            episode_id=episode.episode_id,
            run_id=episode.run_id,
            prompt=episode.query,
            chosen=episode.refined_answer,
            rejected=episode.answer,
            chosen_by=episode.learner,
            rejected_by=episode.learner,
            critique=episode.critique.text,
            chosen_verdict=after,
            rejected_verdict=before,
            source="human" if human else "ai",
            weight=human_weight if human else 1.0,
        )
    ]
