import time

import pytest

from sparring.schemas import Contrast, Critique, Episode, ModelRef, Verdict
from sparring.training.pairs import refinement_pairs

CRITIC = ModelRef(role="critic", model="m")
LEARNER = ModelRef(role="learner", model="m", version=3)


def _critique(harmful: bool | None, helpful: int = 5) -> Critique:
    verdict = (
        None if harmful is None else Verdict(harmful=harmful, helpfulness=helpful, confidence=7)
    )
    return Critique(
        text="because", verdict=verdict, critic=CRITIC, judge_error=None if verdict else "x"
    )


def _episode(before: Critique, after: Critique | None, refined: str = "better") -> Episode:
    return Episode(
        episode_id="e1",
        run_id="r",
        category="c",
        query="q?",
        attacker=ModelRef(role="attacker", model="m"),
        answer="worse",
        learner=LEARNER,
        critique=before,
        refined_answer=refined,
        refined_critique=after,
        outcome="attack_failure",
        started_at=time.time(),
        finished_at=time.time(),
    )


@pytest.mark.parametrize(
    ("before", "after", "pairs"),
    [
        (_critique(False, 3), _critique(False, 5), 1),  # helpfulness +2 = margin
        (_critique(False, 3), _critique(False, 4), 0),  # below margin
        (_critique(True, 8), _critique(False, 2), 1),  # harmful -> safe
        (_critique(False, 3), _critique(True, 9), 0),  # refinement harmful
        (_critique(None), _critique(False, 9), 0),  # judge error before
        (_critique(False, 1), _critique(None), 0),  # judge error after
        (_critique(False, 1), None, 0),  # no refinement
    ],
)
def test_refinement_pair_rule(before: Critique, after: Critique | None, pairs: int) -> None:
    assert len(refinement_pairs(_episode(before, after), margin=2)) == pairs


def test_pair_carries_provenance() -> None:
    (pair,) = refinement_pairs(_episode(_critique(True, 2), _critique(False, 6)), margin=2)
    assert pair.episode_id == "e1" and pair.critique == "because"
    assert pair.chosen == "better" and pair.rejected == "worse"
    assert pair.chosen_by.version == pair.rejected_by.version == 3
    assert pair.rejected_verdict.harmful and not pair.chosen_verdict.harmful


def test_identical_refinement_is_not_a_pair() -> None:
    ep = _episode(_critique(True, 2), _critique(False, 6), refined="worse")
    assert refinement_pairs(ep, margin=2) == []


def test_an_empty_refinement_is_not_a_pair() -> None:
    assert refinement_pairs(_episode(_critique(True, 2), _critique(False, 6), refined=" "), 2) == []


@pytest.mark.parametrize(
    ("mode", "refined", "pairs"),
    [
        ("attack", "Sure, here is a more detailed way to do it.", 0),  # teaches compliance
        ("attack", "I can't help with that. Please talk to someone you trust.", 1),
        ("lookalike", "I can't help with that.", 0),  # teaches over-refusal
        ("lookalike", "Sure: pull the weeds by the root after rain.", 1),
    ],
)
def test_with_rule_check_a_refinement_must_agree_with_the_episode_mode(
    mode: str, refined: str, pairs: int
) -> None:
    """A weak critic's 'better' answer must also refuse an attack, or help with a
    look-alike, by the rule judge's reading (contrast runs: the mode is known)."""
    ep = _episode(_critique(True, 2), _critique(False, 6), refined=refined).model_copy(
        update={
            "mode": mode,
            "contrast": Contrast(
                guarded_answer="x",
                benign=mode == "lookalike",
                plain_refused=False,
                guarded_refused=False,
            ),
        }
    )
    assert len(refinement_pairs(ep, margin=2, rule_check=True)) == pairs
    assert len(refinement_pairs(ep, margin=2)) == 1  # the critic's preference alone
    # without a contrast record (self_refine) there is no mode to agree with
    plain = ep.model_copy(update={"contrast": None})
    assert len(refinement_pairs(plain, margin=2, rule_check=True)) == 1
