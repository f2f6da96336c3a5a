"""Early stopping for a learner version (``trainer.select_epoch``): the adapter
is kept after every step from epoch ``select_from_epoch`` on (0: every step), kept
adapters answer a held-out validation set (``data/validation.jsonl``: harmful
requests and harmless look-alikes, written for this project, in neither
training, the canary nor the eval suites) greedily under each serving
context, and the version is the step that refuses the most harmful requests
while refusing at most ``select_over_refusal`` of the look-alikes and giving
at most ``select_degenerate`` more degenerate answers than the model it trains
from (its adapter as it was before the first step, measured the same way;
all contexts pooled), found by bisection
(:func:`search`); none does: the healthiest step (:func:`choose`). A
candidate whose look-alikes, read first, already break the bound is not
asked the harmful requests (``complete`` false): the search only needs to
know it is beyond. The rule
judge reads refusal, as the gate does; ``degeneration.py`` names degenerate
answers, as the eval and the gate do.

A few dozen pairs move a 135M learner from refusing nothing to refusing half
of everything within one or two epochs, and where that happens depends on the
pairs (docs/experiments.md); a fixed epoch count either undertrains or
overtrains. The canary gate, on other prompts, still decides whether the
chosen epoch serves.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from sparring.agents.learner import request, system_text
from sparring.degeneration import degeneration
from sparring.refusal import rule_judge

BATCH = 48  # answers generated at once


@dataclass(frozen=True)
class Item:
    prompt: str
    category: str
    expect: str  # refuse or help


@dataclass(frozen=True)
class Candidate:
    step: int
    epoch: float
    harmful_refused: float | None  # the lower of the contexts' rates (None: not complete)
    lookalike_refused: float  # the higher of the contexts' rates read
    degenerate: float | None  # of all its answers (None: not complete)
    by_context: dict[str, dict[str, float]]
    # degenerate answers by the rule that named them (degeneration.py), all answers read
    degenerate_rules: dict[str, int] = field(default_factory=dict)
    # false: stopped once a context's look-alikes broke the bound (harmful not asked)
    complete: bool = True
    answers: int = 0  # answers generated
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def validation_items() -> list[Item]:
    path = resources.files("sparring.training") / "data/validation.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Item(r["prompt"], r["category"], r["expect"]) for r in rows]


def snapshot(model: Any) -> dict[str, Any]:
    """The trainable (adapter) weights, copied to the CPU."""
    return {
        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
    }


def restore(model: Any, weights: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in weights:
                p.copy_(weights[n])


MAX_KEPT = 64  # snapshots at most (on the CPU): a longer run keeps every k-th step


START = 0  # the key of the snapshot taken before the first step


def trained_steps(kept: dict[int, Any]) -> list[int]:
    """The kept snapshots' steps after training began (all but ``START``), in order."""
    return sorted(s for s in kept if s != START)


def step_keeper(first_epoch: float) -> tuple[Any, dict[int, tuple[float, dict[str, Any]]]]:
    """A transformers callback that snapshots the adapter (on the CPU) before
    the first step (key ``START``) and after every optimizer step from the end
    of epoch ``first_epoch`` on (every k-th where there would be more than
    ``MAX_KEPT``) and the step training stops at (the last, or one a callback
    before it stopped at, such as ``dpo.time_cap``), and the snapshots by step:
    (epoch, weights), filled as it trains."""
    from transformers import TrainerCallback

    kept: dict[int, tuple[float, dict[str, Any]]] = {}
    plan = {"from": 0, "every": 1}

    class KeepSteps(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            per_epoch = state.max_steps / max(args.num_train_epochs, 1)
            plan["from"] = min(round(first_epoch * per_epoch), state.max_steps)
            plan["every"] = max(1, -(-(state.max_steps - plan["from"]) // MAX_KEPT))
            if (model := kw.get("model")) is not None:
                kept[START] = (0.0, snapshot(model))

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step, model = state.global_step, kw.get("model")
            due = step >= plan["from"] and (state.max_steps - step) % plan["every"] == 0
            due = due or control.should_training_stop
            if model is not None and due:
                kept[step] = (round(state.epoch or 0, 3), snapshot(model))

    return KeepSteps(), kept


def answers(
    model: Any,
    tokenizer: Any,
    messages: list[list[dict[str, str]]],
    max_tokens: int,
    batch: int = BATCH,
) -> list[str]:
    """Greedy answers, in batches (left padding), as the served model gives them."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in messages
    ]
    out: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(texts), batch):
            enc = tokenizer(
                texts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    max_new_tokens=max_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    use_cache=True,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def measure(
    model: Any,
    tokenizer: Any,
    items: list[Item],
    contexts: tuple[str, ...],
    max_tokens: int,
    step: int,
    epoch: float,
    stop_over: float | None = None,
) -> Candidate:
    """The candidate's figures: every context's look-alikes are answered
    first, then every context's harmful requests. ``stop_over``: the first
    context whose look-alikes refused exceed it ends the measurement (the
    candidate is beyond the bound whatever else it does): ``complete`` false,
    ``by_context`` holds what was read, harmful_refused and degenerate are
    None."""
    began = time.perf_counter()
    by_context: dict[str, dict[str, float]] = {}
    rules: Counter[str] = Counter()
    read = 0

    def refused(group: list[Item], system: str | None) -> float:
        nonlocal read
        said = answers(model, tokenizer, [request(i.prompt, system) for i in group], max_tokens)
        read += len(said)
        for answer in said:
            if why := degeneration(answer):
                rules[why] += 1
        return sum(rule_judge(a).refused for a in said) / len(said)

    harmless = [i for i in items if i.expect == "help"]
    harmful = [i for i in items if i.expect == "refuse"]
    systems = {c: system_text("served" if c == "served" else "template") for c in contexts}
    complete = True
    for context in contexts:
        by_context[context] = {"lookalike_refused": refused(harmless, systems[context])}
        if stop_over is not None and by_context[context]["lookalike_refused"] > stop_over + 1e-9:
            complete = False
            break
    if complete:
        for context in contexts:
            by_context[context]["harmful_refused"] = refused(harmful, systems[context])
    return Candidate(
        step=step,
        epoch=epoch,
        harmful_refused=min(c["harmful_refused"] for c in by_context.values())
        if complete
        else None,
        lookalike_refused=max(c["lookalike_refused"] for c in by_context.values()),
        degenerate=sum(rules.values()) / read if complete else None,
        by_context=by_context,
        degenerate_rules=dict(sorted(rules.items())),
        complete=complete,
        answers=read,
        seconds=round(time.perf_counter() - began, 1),
    )


@dataclass(frozen=True)
class Bounds:
    """What a step must keep to be chosen for its harmful refusals: look-alikes
    refused at most ``over_refusal``; degenerate answers at most ``degenerate``
    (None: unbounded)."""

    over_refusal: float
    degenerate: float | None = None

    def healthy(self, c: Candidate) -> bool:
        """Within the degeneration bound (a candidate not measured in full is not known to be)."""
        if self.degenerate is None:
            return True
        return c.degenerate is not None and c.degenerate <= self.degenerate + 1e-9

    def within(self, c: Candidate) -> bool:
        return c.lookalike_refused <= self.over_refusal + 1e-9 and self.healthy(c)


def choose(candidates: list[Candidate], bounds: Bounds) -> Candidate:
    """The most harmful requests refused among the candidates within ``bounds``
    (ties: the earlier step); none is: of the healthy ones the fewest
    look-alikes refused (ties: the most harmful refused, then the earlier);
    none is healthy: the fewest degenerate answers (then as before)."""

    def harmful(c: Candidate) -> float:
        return c.harmful_refused if c.harmful_refused is not None else 0.0

    within = [c for c in candidates if bounds.within(c)]
    if within:
        return max(within, key=lambda c: (harmful(c), -c.step))
    healthy = [c for c in candidates if bounds.healthy(c)]
    if healthy:
        return min(healthy, key=lambda c: (c.lookalike_refused, -harmful(c), c.step))
    return min(
        candidates,
        key=lambda c: (
            c.degenerate if c.degenerate is not None else 1.0,
            c.lookalike_refused,
            -harmful(c),
            c.step,
        ),
    )


def search(
    steps: list[int],
    measure_at: Callable[[int, float | None], Candidate],
    bounds: Bounds,
    start: Candidate | None = None,
) -> tuple[Candidate, list[Candidate]]:
    """The step to publish, and every candidate measured. Refusal grows with
    training and degeneration mostly does, so the latest step within ``bounds`` is
    found by bisection: the last step; if it is beyond, halving the steps
    between the last within and the first beyond, from ``start`` (the model
    before the first step) where it is within, else from the first step. Of
    those measured, :func:`choose` picks (noise can put an earlier one ahead).
    ``measure_at(step, stop_over)`` may stop early on a candidate beyond the
    look-alike bound (``complete`` false). Where none measured is within, the
    earliest measured is measured again in full (its look-alikes answered a
    second time) and the fallback chooses among the complete ones: assuming
    refusal grows with training, the earliest refuses the fewest look-alikes
    (docs/experiments.md has paths where it does not)."""
    measured: dict[int, Candidate] = {}

    def at(i: int) -> Candidate:
        if steps[i] not in measured:
            measured[steps[i]] = measure_at(steps[i], bounds.over_refusal)
        return measured[steps[i]]

    lo, hi = 0, len(steps) - 1
    if start is not None and bounds.within(start):
        lo = -1  # the start stands for the bisection's lower end: nothing to measure
    if not bounds.within(at(hi)) and (lo < 0 or bounds.within(at(lo))):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if bounds.within(at(mid)):
                lo = mid
            else:
                hi = mid
    if not any(bounds.within(c) for c in measured.values()):
        first = min(measured)
        if not measured[first].complete:
            measured[first] = measure_at(first, None)
    found = sorted(measured.values(), key=lambda c: c.step)
    return choose([c for c in found if c.complete], bounds), found
