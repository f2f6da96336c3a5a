"""trainer.select_epoch: the epoch published is the one that refuses the most
held-out harmful requests within the look-alike bound, measured on a validation
set nobody trains, gates or evaluates on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparring.training.selection import Candidate, choose, search, validation_items


def cand(step: int, harmful: float, lookalike: float) -> Candidate:
    return Candidate(step, step / 8, harmful, lookalike, 0.0, {})


def test_the_most_harmful_refusals_within_the_bound_win_else_the_fewest_over_refusals() -> None:
    two, three, four = cand(16, 0.2, 0.05), cand(24, 0.5, 0.1), cand(32, 0.82, 0.25)
    assert choose([two, three, four], 0.1).step == 24
    assert choose([two, three, four], 0.3).step == 32
    assert choose([two, three, four], 0.01).step == 16  # none within: fewest look-alikes
    assert choose([cand(16, 0.5, 0.1), cand(24, 0.5, 0.05)], 0.1).step == 16  # tie: earlier


def test_bisection_finds_the_last_step_within_the_bound_in_few_measurements() -> None:
    """Refusal rising with training, as measured (efficacy-20261130-035414: 6 %
    of look-alikes after epoch 2, 29 % after epoch 3): the latest step within
    the bound is found by measuring about log2(steps) of them."""
    steps = list(range(8, 33))

    def rising(step: int) -> Candidate:
        return cand(step, min(1.0, step / 30), max(0.0, (step - 14) / 40))

    asked: list[int] = []

    def measure_at(step: int) -> Candidate:
        asked.append(step)
        return rising(step)

    best, measured = search(steps, measure_at, 0.1)
    assert best.step == 18  # (18 - 14) / 40 = 0.1; 19 is over
    assert len(asked) == len(set(asked)) <= 7 and [c.step for c in measured] == sorted(asked)
    assert search(steps, rising, 0.5)[0].step == 32  # the last step within: no search
    assert search(steps, lambda s: cand(s, 0.9, 0.3), 0.1)[0].step == 8  # none: the first


def test_the_validation_set_is_balanced_and_held_out_of_every_other_prompt_set() -> None:
    items = validation_items()
    kinds = {k: sum(i.expect == k for i in items) for k in ("refuse", "help")}
    assert kinds["refuse"] >= 40 and kinds["help"] >= 40 and len(items) == sum(kinds.values())
    assert len({i.category for i in items if i.expect == "refuse"}) >= 12
    root = Path(__file__).parent.parent / "sparring"
    others = set()
    for path in (root / "eval" / "data").glob("*.jsonl"):
        others |= {json.loads(line)["prompt"].lower() for line in path.read_text().splitlines()}
    seeds = (root / "agents" / "seeds.yaml").read_text().lower()
    for item in items:
        assert item.prompt.lower() not in others and item.prompt.lower() not in seeds


def test_a_version_trains_up_to_its_epochs_and_publishes_the_chosen_one(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """Real DPO steps on the tiny model: steps from the end of select_from_epoch
    on answer the validation set under each serving context, the record names
    the chosen step with every measured candidate's figures, and the weights
    written are that step's (its adapter answers the validation set as it did)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparring.training.dpo import train_version
    from sparring.training.selection import measure
    from tests.test_trainer import CFG, make_pairs

    cfg = CFG.model_copy(
        update={
            "epochs": 3,
            "select_epoch": True,
            "select_from_epoch": 2,
            "contexts": ["served", "template"],
        }
    )
    events: list[tuple[str, dict[str, Any]]] = []
    result = train_version(
        tiny_model_path,
        make_pairs(4),
        tmp_path / "v1",
        cfg,
        report=lambda event, **fields: events.append((event, fields)),
    )
    assert result.steps == 3 * 4  # 4 pairs x 2 contexts / batch 2, 3 epochs
    measured = [c["step"] for c in result.selection]
    # progress as it trains (the last step always), then each candidate measured
    progress = [f for e, f in events if e == "train.progress"]
    assert progress and progress[-1]["step"] == progress[-1]["steps"] == 12
    assert progress[-1]["eta_s"] == 0 and progress[-1]["loss"] is not None
    candidates = [f for e, f in events if e == "train.candidate"]  # in the order measured
    assert sorted(candidates, key=lambda c: c["step"]) == list(result.selection)
    assert measured and set(measured) <= set(range(8, 13)) and 12 in measured
    assert result.step in measured
    chosen = next(c for c in result.selection if c["step"] == result.step)
    assert set(chosen["by_context"]) == {"served", "template"}
    from peft import PeftModel

    # the adapter on the base: the computation the candidates were measured with
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_path))
    model = PeftModel.from_pretrained(base, str(tmp_path / "v1" / "adapter"))
    again = measure(
        model,
        AutoTokenizer.from_pretrained(str(tiny_model_path)),
        validation_items(),
        ("served", "template"),
        cfg.select_max_tokens,
        chosen["step"],
        chosen["epoch"],
    )
    assert again.by_context == chosen["by_context"]
