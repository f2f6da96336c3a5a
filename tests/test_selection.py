"""trainer.select_epoch: the epoch published is the one that refuses the most
held-out harmful requests within the look-alike and degeneration bounds,
measured on a validation set nobody trains, gates or evaluates on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sparring.training.selection import Bounds, Candidate, choose, search, validation_items


def cand(step: int, harmful: float, lookalike: float, degenerate: float = 0.0) -> Candidate:
    return Candidate(step, step / 8, harmful, lookalike, degenerate, {})


def test_the_most_harmful_refusals_within_the_bound_win_else_the_fewest_over_refusals() -> None:
    two, three, four = cand(16, 0.2, 0.05), cand(24, 0.5, 0.1), cand(32, 0.82, 0.25)
    assert choose([two, three, four], Bounds(0.1)).step == 24
    assert choose([two, three, four], Bounds(0.3)).step == 32
    assert choose([two, three, four], Bounds(0.01)).step == 16  # none within: fewest look-alikes
    tie = [cand(16, 0.5, 0.1), cand(24, 0.5, 0.05)]
    assert choose(tie, Bounds(0.1)).step == 16  # tie: earlier


def test_a_step_that_degenerates_beyond_the_bound_is_not_chosen_for_its_refusals() -> None:
    """As measured on the validation set at 32 tokens, efficacy-20261130-234723's
    training retraced (benchmarks/results/efficacy_avx2_selection_degenerate.json):
    the start gave 4 of 192 answers degenerate, step 5 6, and step 10 (the
    loop's v1) 57 while within the look-alike bound (it refused 27 % of harmful
    requests, 6 % of look-alikes)."""
    start = 4 / 192
    bounds = Bounds(0.1, start + 0.05)
    healthy, degenerate = cand(5, 0.0, 0.021, 6 / 192), cand(10, 0.27, 0.0625, 57 / 192)
    assert choose([healthy, degenerate], bounds).step == 5
    assert choose([healthy, degenerate], Bounds(0.1)).step == 10  # unbounded: as before
    # none within the look-alike bound: the healthy one refusing the fewest
    over = cand(12, 0.6, 0.3, 0.02)
    assert choose([cand(10, 0.5, 0.2, 0.3), over], bounds).step == 12
    # none healthy: the least degenerate
    sick = [cand(8, 0.1, 0.0, 0.2), cand(10, 0.3, 0.05, 0.12), cand(12, 0.5, 0.1, 0.4)]
    assert choose(sick, bounds).step == 10


def test_bisection_stops_before_the_step_where_answers_degenerate() -> None:
    """Degeneration rising with training bounds the search as over-refusal does:
    the latest step within both is found."""
    steps = list(range(8, 33))

    def rising(step: int, stop_over: float | None = None) -> Candidate:
        return cand(step, min(1.0, step / 30), 0.0, max(0.02, (step - 12) / 50))

    best, _ = search(steps, rising, Bounds(0.1, 0.02 + 0.05))
    assert best.step == 15  # (15 - 12) / 50 = 0.06; 16 gives 0.08
    assert search(steps, rising, Bounds(0.1))[0].step == 32


def test_bisection_finds_the_last_step_within_the_bound_in_few_measurements() -> None:
    """Refusal rising with training, as measured (efficacy-20261130-035414: 6 %
    of look-alikes after epoch 2, 29 % after epoch 3): the latest step within
    the bound is found by measuring about log2(steps) of them."""
    steps = list(range(8, 33))

    def rising(step: int, stop_over: float | None = None) -> Candidate:
        return cand(step, min(1.0, step / 30), max(0.0, (step - 14) / 40))

    asked: list[int] = []

    def measure_at(step: int, stop_over: float | None) -> Candidate:
        asked.append(step)
        return rising(step)

    best, measured = search(steps, measure_at, Bounds(0.1))
    assert best.step == 18  # (18 - 14) / 40 = 0.1; 19 is over
    assert len(asked) == len(set(asked)) <= 7 and [c.step for c in measured] == sorted(asked)
    assert search(steps, rising, Bounds(0.5))[0].step == 32  # the last step within: no search
    none = search(steps, lambda s, _: cand(s, 0.9, 0.3), Bounds(0.1))
    assert none[0].step == 8  # none within: the first


def test_a_start_within_the_bounds_is_the_bisection_s_lower_end() -> None:
    """The model before the first step, measured anyway for the degeneration
    bound, stands for the lower end: the first step is not measured unless
    the bisection comes down to it."""
    steps = list(range(1, 33))

    def rising(step: int, stop_over: float | None) -> Candidate:
        return cand(step, min(1.0, step / 30), max(0.0, (step - 14) / 40))

    asked: list[int] = []

    def measure_at(step: int, stop_over: float | None) -> Candidate:
        asked.append(step)
        return rising(step, stop_over)

    start = cand(0, 0.0, 0.0)
    best, _ = search(steps, measure_at, Bounds(0.1), start)
    assert best.step == 18 and 1 not in asked and len(asked) <= 6
    asked.clear()
    assert search(steps, measure_at, Bounds(0.1))[0].step == 18 and 1 in asked  # no start
    asked.clear()
    beyond = cand(0, 0.0, 0.2)  # a continued adapter already over the bound: the first step
    assert search(steps, measure_at, Bounds(0.1), beyond)[0].step == 18 and 1 in asked


def test_a_candidate_stopped_at_its_look_alikes_is_never_chosen_and_the_earliest_is_completed() -> (
    None
):
    """A step whose look-alikes broke the bound is known to be beyond and is
    not asked the rest; where every step measured is beyond, the earliest is
    measured in full and the fallback reads complete figures only."""
    steps = list(range(1, 17))
    asked: list[tuple[int, float | None]] = []

    def measure_at(step: int, stop_over: float | None) -> Candidate:
        asked.append((step, stop_over))
        full = cand(step, 0.9, 0.2 + step / 100, 0.3 - step / 100)
        if stop_over is not None and full.lookalike_refused > stop_over:
            return Candidate(step, step / 8, None, full.lookalike_refused, None, {}, complete=False)
        return full

    # the first step is within the look-alike bound on its re-measure but beyond the
    # degeneration bound; a partial's unknown degeneration must not make it "healthy"
    best, found = search(steps, measure_at, Bounds(0.1, 0.2), cand(0, 0.0, 0.0))
    assert asked[-1] == (1, None) and best.step == 1 and best.complete
    assert [c.step for c in found if not c.complete] == sorted({s for s, _ in asked} - {1})


def test_a_step_beyond_the_look_alike_bound_is_not_asked_the_harmful_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """measure's order: every context's look-alikes, then every context's
    harmful requests. The answers are scripted (a 135M model cannot be made to refuse
    on cue); the rule judge, the degeneration rules and the counting are real."""
    from sparring.training import selection

    items = validation_items()
    asked: list[list[str]] = []
    refusal, help_ = "I'm sorry, but I can't help with that.", "Sure: here is a short answer."

    def scripted(refuse_lookalikes: bool) -> Any:
        def answers(model: Any, tokenizer: Any, messages: Any, max_tokens: int) -> list[str]:
            asked.append([m[-1]["content"] for m in messages])
            lookalikes = {i.prompt for i in items if i.expect == "help"}
            return [
                refusal if m[-1]["content"] not in lookalikes or refuse_lookalikes else help_
                for m in messages
            ]

        return answers

    contexts = ("served", "template")
    monkeypatch.setattr(selection, "answers", scripted(refuse_lookalikes=True))
    beyond = selection.measure(None, None, items, contexts, 64, 7, 1.0, stop_over=0.1)
    harmless = sorted(i.prompt for i in items if i.expect == "help")
    assert not beyond.complete and len(asked) == 1 and sorted(asked[0]) == harmless
    assert beyond.harmful_refused is None and beyond.degenerate is None
    assert beyond.lookalike_refused == 1.0 and beyond.answers == len(harmless)
    assert list(beyond.by_context) == ["served"]
    asked.clear()
    monkeypatch.setattr(selection, "answers", scripted(refuse_lookalikes=False))
    within = selection.measure(None, None, items, contexts, 64, 7, 1.0, stop_over=0.1)
    assert within.complete and len(asked) == 4 and within.answers == 2 * len(items)
    assert within.harmful_refused == 1.0 and within.lookalike_refused == 0.0
    assert within.by_context == {
        c: {"lookalike_refused": 0.0, "harmful_refused": 1.0} for c in contexts
    }
    asked.clear()
    monkeypatch.setattr(selection, "answers", scripted(refuse_lookalikes=True))
    unbounded = selection.measure(None, None, items, contexts, 64, 7, 1.0)
    assert unbounded.complete and len(asked) == 4 and unbounded.lookalike_refused == 1.0


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


def train_reported(base: Path, out: Path, cfg: Any) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    """Real DPO steps on four pairs, with every event the trainer reported."""
    from sparring.training.dpo import train_version
    from tests.test_trainer import make_pairs

    events: list[tuple[str, dict[str, Any]]] = []
    result = train_version(
        base, make_pairs(4), out, cfg, report=lambda e, **fields: events.append((e, fields))
    )
    return result, events


def test_a_version_trains_up_to_its_epochs_and_publishes_the_chosen_one(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """Real DPO steps on the tiny model: steps from the end of select_from_epoch
    on answer the validation set under each serving context, the record names
    the chosen step with every measured candidate's figures, and the weights
    written are that step's (its adapter answers the validation set as it did)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparring.training.selection import measure
    from tests.test_trainer import CFG

    cfg = CFG.model_copy(
        update={
            "epochs": 3,
            "select_epoch": True,
            "select_from_epoch": 2,
            "contexts": ["served", "template"],
        }
    )
    result, events = train_reported(tiny_model_path, tmp_path / "v1", cfg)
    assert result.steps == result.planned_steps == 3 * 4  # 4 pairs x 2 contexts / batch 2
    measured = [c["step"] for c in result.selection]
    # progress as it trains (the last step always), then each candidate measured
    progress = [f for e, f in events if e == "train.progress"]
    assert progress and progress[-1]["step"] == progress[-1]["steps"] == 12
    assert progress[-1]["eta_s"] == 0 and progress[-1]["loss"] is not None
    candidates = [f for e, f in events if e == "train.candidate"]  # in the order measured
    # a step stopped at its look-alikes and measured again in full (every step beyond
    # the bounds) is reported twice; the record holds its last measurement
    last = {c["step"]: c for c in candidates}
    assert [last[s] for s in sorted(last)] == list(result.selection)
    assert measured and set(measured) <= set(range(8, 13)) and 12 in measured
    assert result.step in measured
    chosen = next(c for c in result.selection if c["step"] == result.step)
    assert set(chosen["by_context"]) == {"served", "template"}
    for c in (*result.selection, result.selection_start):  # the rate, and by which rules
        assert c is not None and sum(c["degenerate_rules"].values()) <= c["answers"]
        if c["complete"]:
            assert c["answers"] == 2 * len(validation_items())
            assert sum(c["degenerate_rules"].values()) == round(c["degenerate"] * c["answers"])
        else:  # beyond the look-alike bound on what it read
            assert c["degenerate"] is None and c["lookalike_refused"] > cfg.select_over_refusal
    # the model before training, measured first: the reference of the
    # degeneration bound, by which the recorded choice was made
    start = result.selection_start
    assert start is not None and start["step"] == 0
    assert [f for e, f in events if e == "train.start_measured"] == [start]
    order = [e for e, _ in events if e in ("train.start_measured", "train.candidate")]
    assert order[0] == "train.start_measured"  # then the candidates
    assert cfg.select_degenerate is not None
    bounds = Bounds(cfg.select_over_refusal, start["degenerate"] + cfg.select_degenerate)
    recorded = [Candidate(**c) for c in result.selection]
    assert choose(recorded, bounds).step == result.step
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_path))
    plain = measure(
        base, tokenizer, validation_items(), ("served", "template"), cfg.select_max_tokens, 0, 0.0
    )
    assert {**plain.as_dict(), "seconds": 0} == {**start, "seconds": 0}  # as the base model
    # the adapter on the base: the computation the candidates were measured with
    model = PeftModel.from_pretrained(base, str(tmp_path / "v1" / "adapter"))
    again = measure(
        model,
        tokenizer,
        validation_items(),
        ("served", "template"),
        cfg.select_max_tokens,
        chosen["step"],
        chosen["epoch"],
    )
    assert again.by_context == chosen["by_context"]


def test_a_time_cap_stops_training_and_the_step_it_stopped_at_is_published(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """trainer.max_train_minutes: real DPO steps on the tiny model stop after
    the first step past the cap (here the first), said in a train.time_cap
    event; that step is kept even before select_from_epoch, and the weights
    written are its own, not the model it started from."""
    from safetensors.torch import load_file

    from tests.test_trainer import CFG

    cfg = CFG.model_copy(
        update={
            "epochs": 3,
            "select_epoch": True,
            "select_from_epoch": 2,
            "max_train_minutes": 1e-6,
        }
    )
    result, events = train_reported(tiny_model_path, tmp_path / "v1", cfg)
    assert (result.steps, result.planned_steps) == (1, 3 * 2)  # 4 pairs / batch 2, 3 epochs
    capped = [f for e, f in events if e == "train.time_cap"]
    assert len(capped) == 1 and (capped[0]["step"], capped[0]["steps"]) == (1, 6)
    assert capped[0]["seconds"] >= 1e-6 * 60 and capped[0]["max_train_minutes"] == 1e-6
    progress = [f for e, f in events if e == "train.progress"]
    assert progress[-1]["step"] == 1 and progress[-1]["eta_s"] == 0  # none after the cap
    assert result.step is None and not result.selection  # one step trained: nothing to choose
    lora = load_file(str(tmp_path / "v1" / "adapter" / "adapter_model.safetensors"))
    lora_b = [w for name, w in lora.items() if "lora_B" in name]
    # a new LoRA starts with B = 0: one step moved it
    assert lora_b and any(float(w.abs().max()) > 0 for w in lora_b)


def test_the_keeper_keeps_the_step_training_stops_at_even_before_its_first_epoch() -> None:
    """A callback before it (dpo.time_cap) may stop training early: that step
    is kept, or the step search could not choose the weights it trained."""
    from types import SimpleNamespace

    import torch
    from transformers import TrainerControl

    from sparring.training.selection import START, step_keeper

    keeper, kept = step_keeper(2)  # keeps from step 8 of 12
    model = torch.nn.Linear(2, 2)
    args, state = SimpleNamespace(num_train_epochs=3), SimpleNamespace(max_steps=12)
    control = TrainerControl()
    keeper.on_train_begin(args, state, control, model=model)
    for step in (1, 2, 3):
        state.global_step, state.epoch = step, step / 4
        control.should_training_stop = step == 3
        keeper.on_step_end(args, state, control, model=model)
    assert sorted(kept) == [START, 3] and kept[3][0] == 0.75


def test_a_time_cap_is_off_with_several_training_processes() -> None:
    """Each rank would read its own clock and could stop a step before another,
    which would then wait for it in the gradients' all-reduce: off, said once."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from sparring.training.dpo import time_cap

    events: list[tuple[str, dict[str, Any]]] = []
    cap, control = time_cap(0.0, lambda e, **kw: events.append((e, kw))), TrainerControl()
    state = SimpleNamespace(global_step=1, max_steps=5, epoch=0.2)
    cap.on_train_begin(SimpleNamespace(world_size=2), state, control)
    cap.on_step_end(SimpleNamespace(), state, control)
    assert not control.should_training_stop  # past the cap, but off
    assert [e for e, _ in events] == ["train.time_cap_off"]
    assert "needs one training process, not 2" in events[0][1]["reason"]
    cap.on_train_begin(SimpleNamespace(world_size=1), state, control)  # one: on
    cap.on_step_end(SimpleNamespace(), state, control)
    assert control.should_training_stop and events[-1][0] == "train.time_cap"


def test_the_starting_model_s_degeneration_bounds_the_step_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The trainer's wiring: the starting model's rate plus select_degenerate
    bounds the candidates (the figures are those of the loop's path on
    efficacy-20261130-234723: step 10 within the look-alike bound but
    degenerate in 57 of 192 answers); null: refusal alone decides."""
    from sparring.training import dpo
    from tests.test_trainer import CFG

    figures = {7: cand(7, 0.1875, 0.083, 30 / 192), 5: cand(5, 0.0, 0.021, 6 / 192)}
    figures[10] = cand(10, 0.27, 0.0625, 57 / 192)
    figures[0] = cand(0, 0.0, 0.021, 4 / 192)  # the start (selection.START)
    monkeypatch.setattr(dpo.selection, "restore", lambda model, weights: None)
    asked: list[tuple[int, float | None]] = []

    def measure(*a: Any, stop_over: float | None = None) -> Candidate:
        asked.append((a[5], stop_over))
        return figures[a[5]]

    monkeypatch.setattr(dpo.selection, "measure", measure)
    steps: dict[int, tuple[float, dict[str, Any]]] = {s: (s / 4, {}) for s in (5, 7, 10)}
    kept = {dpo.selection.START: (0.0, {}), **steps}
    cfg = CFG.model_copy(update={"select_epoch": True, "select_degenerate": 0.05})
    assert dpo._select_step(None, None, kept, cfg)[0] == 5
    loose = cfg.model_copy(update={"select_degenerate": 0.15})
    assert dpo._select_step(None, None, kept, loose)[0] == 7
    said: list[tuple[str, dict[str, Any]]] = []
    no_start = dpo._select_step(None, None, steps, cfg, lambda e, **f: said.append((e, f)))
    assert no_start[0] == 10 and no_start[2] is None  # no start: no bound, and said so
    assert [e for e, _ in said if e.startswith("train.start")] == ["train.start_missing"]
    unbounded = cfg.model_copy(update={"select_degenerate": None})
    said.clear()
    unbounded_choice = dpo._select_step(
        None, None, kept, unbounded, lambda e, **f: said.append((e, f))
    )
    assert unbounded_choice[::2] == (10, None)  # start not measured, and nothing missing
    assert not [e for e, _ in said if e.startswith("train.start")]
    # the start is measured in full and is the bisection's lower end; the steps
    # are read up to the look-alike bound: the first step is never measured
    figures[8], figures[9] = cand(8, 0.2, 0.07, 0.1), cand(9, 0.25, 0.08, 0.2)
    more = {**kept, **{s: (s / 4, {}) for s in (8, 9)}}
    asked.clear()
    assert dpo._select_step(None, None, more, loose)[0] == 8
    assert asked[0] == (0, None) and {s for s, _ in asked} == {0, 10, 7, 8, 9}
    assert {o for s, o in asked[1:]} == {loose.select_over_refusal}


def test_the_time_to_go_counts_the_time_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """train.progress's eta_s: at 3 s a step, 90 steps to go are 270 s, but a
    1-minute cap stops training after the step crossing it: 33 s to go at
    30 s in. With several training processes the cap is off, and so uncounted."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from sparring.training import dpo

    clock = [100.0]
    monkeypatch.setattr(dpo.time, "perf_counter", lambda: clock[0])
    for cap, world, eta in ((None, 1, 270.0), (1.0, 1, 33.0), (1.0, 2, 270.0)):
        events: list[dict[str, Any]] = []

        def report(event: str, _to: list[dict[str, Any]] = events, **kw: Any) -> None:
            _to.append(kw)

        progress = dpo.progress_callback(report, 0.0, cap)
        state, control = SimpleNamespace(max_steps=100, global_step=0, epoch=0.0), TrainerControl()
        state.log_history = []
        progress.on_train_begin(SimpleNamespace(world_size=world), state, control)
        clock[0] += 30.0
        state.global_step = 10
        progress.on_step_end(SimpleNamespace(), state, control)
        assert events[-1]["eta_s"] == eta, (cap, world)
        clock[0] = 100.0
