"""One DPO training round: a thin wrapper around TRL's DPOTrainer with a LoRA.

torch, transformers, trl and peft are imported inside the function so that
``import sparring`` stays light.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparring.config import TrainerConfig
from sparring.degeneration import degeneration
from sparring.schemas import PreferencePair
from sparring.serving.hardware import fast_bf16
from sparring.training import selection


@dataclass(frozen=True)
class TrainResult:
    loss: float | None
    steps: int
    seconds: float
    reward_margin: float | None
    reward_accuracy: float | None = None
    # the learning rate of the last logged step (the schedule's end point)
    last_learning_rate: float | None = None
    device: str = "cpu"
    bf16: bool = False
    checkpointing: bool = False
    # select_epoch: the step published, and every measured candidate's figures
    step: int | None = None
    selection: tuple[dict[str, Any], ...] = ()
    # select_epoch: the model it trained from, measured as the candidates are
    # (step 0), whose degenerate rate bounds theirs (select_degenerate)
    selection_start: dict[str, Any] | None = None
    # the steps its epochs would have taken; more than ``steps`` when
    # max_train_minutes stopped it
    planned_steps: int | None = None


def prompt_messages(pair: PreferencePair, context: str = "served") -> list[dict[str, str]]:
    """The request the learner was served (system prompt included), as chat
    messages; ``template``: the same request without a system message, as a
    user who sends none is served it (the chat template adds its default)."""
    return [
        {"role": m.role, "content": m.content}
        for m in pair.messages
        if context == "served" or m.role != "system"
    ]


def pair_problem(pair: PreferencePair, tokenizer: Any) -> str | None:
    """Why the trainer must refuse ``pair``, or None. ``tokenizer``: the served
    model's, whose chat template both the engine and TRL apply."""
    if not pair.prompt.strip():
        return "no prompt"
    if not pair.messages:
        return "no message list (the request the learner was served)"
    if not pair.chosen.strip():
        return "empty chosen answer"
    if not pair.rejected.strip():
        return "empty rejected answer"
    if pair.chosen.strip() == pair.rejected.strip():
        return "chosen and rejected answers are the same"
    if why := degeneration(pair.chosen):
        return f"degenerate chosen answer ({why})"
    roles = [m.role for m in pair.messages]
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(turns)):
        return (
            "message list does not match the chat template: want an optional system "
            f"message, then user and assistant turns in turn, ending on user (got {roles})"
        )
    if turns[-1] != "user":
        return f"message list does not end on a user message (got {roles})"
    if any(not m.content.strip() for m in pair.messages if m.role != "system"):
        return "message list holds an empty user or assistant message"
    try:
        tokenizer.apply_chat_template(
            prompt_messages(pair), tokenize=False, add_generation_prompt=True
        )
    except Exception as err:  # the template's own check (jinja raise_exception)
        return f"the chat template cannot render the message list ({str(err)[:200]})"
    return None


def pairs_dataset(pairs: list[PreferencePair], contexts: tuple[str, ...] = ("served",)) -> Any:
    """TRL's conversational preference format: the prompt is the learner's served
    request (system prompt included) and TRL renders it with the model's chat
    template, as the engine does (train exactly what is served), once per
    serving context (``contexts``: served, template).

    DPOTrainer has no per-example weights, so a pair of weight w (human-reviewed
    pairs weigh more than AI-judged ones) appears round(w) times."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": prompt_messages(p, context),
                "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}],
            }
            for p in pairs
            for context in contexts
            # without a system message, the template context is the served one
            if context == "served" or any(m.role == "system" for m in p.messages)
            for _ in range(max(1, round(p.weight)))
        ]
    )


class TrainingDiverged(RuntimeError):
    """The loss or the trained weights are not finite: nothing is written."""


def _finite(model: Any) -> bool:
    """Whether every trainable weight (the adapter) is finite."""
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def train_version(
    base: Path | str,
    pairs: list[PreferencePair],
    out_dir: Path,
    cfg: TrainerConfig,
    seed: int = 0,
    *,
    adapter_from: Path | None = None,
    report: Callable[..., None] | None = None,
) -> TrainResult:
    """Train a LoRA on ``pairs`` from the model ``base`` (a folder or hub id).

    ``adapter_from``: the adapter (on ``base``) to train on; None: a new LoRA.
    The adapter is written to ``out_dir/adapter`` (what vLLM loads with
    load_lora_adapter); with ``publish: merged`` also ``base`` with the adapter
    merged in, plus the tokenizer (what transformers serve and vLLM's full
    reload serve), to ``out_dir``. ``report(event, **fields)``: called with
    ``train.progress`` as it trains (at most every PROGRESS_EVERY_S seconds, and
    at the step it stops at), ``train.time_cap`` if max_train_minutes stopped
    it, and ``train.candidate`` for each step measured on the validation set.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    _quiet_progress_bars()
    cuda = torch.cuda.is_available()
    bf16 = fast_bf16("cuda" if cuda else "cpu") if cfg.bf16 == "auto" else cfg.bf16
    bf16 = bf16 and (not cuda or torch.cuda.is_bf16_supported())
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(base), dtype=torch.bfloat16 if bf16 else torch.float32
    )
    if adapter_from is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_from), is_trainable=True)
    with tempfile.TemporaryDirectory(prefix="sparring-dpo-") as scratch:
        trainer = _dpo_trainer(
            model,
            tokenizer,
            pairs,
            cfg,
            scratch,
            bf16=bf16,
            cuda=cuda,
            seed=seed,
            new_adapter=adapter_from is None,
        )
        if cfg.max_train_minutes is not None:  # before the keeper: it keeps the step it stops at
            trainer.add_callback(time_cap(cfg.max_train_minutes, report))
        keeper, kept = selection.step_keeper(cfg.select_from_epoch)
        if cfg.select_epoch:
            trainer.add_callback(keeper)
        if report is not None:
            trainer.add_callback(progress_callback(report, cap_minutes=cfg.max_train_minutes))
        output = trainer.train()
        checkpointing = bool(trainer.args.activation_checkpointing)
    history: list[dict[str, Any]] = trainer.state.log_history
    peft_model: Any = trainer.model
    loss = output.training_loss
    if loss is None or not math.isfinite(loss) or not _finite(peft_model):
        raise TrainingDiverged(
            f"training diverged after {output.global_step} steps (loss {loss}, "
            f"learning rate {cfg.learning_rate}): no version written"
        )
    chosen: int | None = None
    candidates: list[selection.Candidate] = []
    before: selection.Candidate | None = None
    # one step kept: the last, as without selection
    if len(selection.trained_steps(kept)) > 1 and _is_main_process(trainer):
        chosen, candidates, before = _select_step(peft_model, tokenizer, kept, cfg, report)
    if _is_main_process(trainer):
        out_dir.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(out_dir / "adapter"))
        if cfg.publish == "merged":
            # Saved in the dtype it was trained in: rounding an fp32 merge to bf16
            # would erase most of a few-step LoRA update (bf16 keeps ~3 digits).
            merged = peft_model.merge_and_unload()
            merged.save_pretrained(str(out_dir))
            tokenizer.save_pretrained(str(out_dir))
    margins = [h["rewards/margins"] for h in history if "rewards/margins" in h]
    accuracies = [h["rewards/accuracies"] for h in history if "rewards/accuracies" in h]
    rates = [h["learning_rate"] for h in history if "learning_rate" in h]
    return TrainResult(
        loss=float(loss),
        steps=int(output.global_step),
        seconds=time.perf_counter() - start,
        reward_margin=float(margins[-1]) if margins else None,
        reward_accuracy=float(accuracies[-1]) if accuracies else None,
        last_learning_rate=float(rates[-1]) if rates else None,
        device="cuda" if cuda else "cpu",
        bf16=bool(bf16),
        checkpointing=checkpointing,
        step=chosen,
        selection=tuple(c.as_dict() for c in candidates),
        selection_start=before.as_dict() if before is not None else None,
        planned_steps=int(trainer.state.max_steps),
    )


def _select_step(
    model: Any,
    tokenizer: Any,
    kept: dict[int, tuple[float, dict[str, Any]]],
    cfg: TrainerConfig,
    report: Callable[..., None] | None = None,
) -> tuple[int, list[selection.Candidate], selection.Candidate | None]:
    """Measure kept steps' adapters on the validation set (a bisection), load
    the chosen one into ``model`` (the one then written), and return its step,
    every candidate measured (``selection``) and the start. The start is the
    adapter before the first step (``kept[selection.START]``: a new LoRA
    changes nothing yet, a continued one is the version it continues),
    measured first the same way when select_degenerate is set: its degenerate
    rate plus select_degenerate bounds the candidates', and within the bounds
    it is the bisection's lower end. Without a start the bound cannot be set:
    ``train.start_missing`` is reported and refusal alone decides."""
    items = selection.validation_items()

    def measure_at(
        step: int, stop_over: float | None, event: str = "train.candidate"
    ) -> selection.Candidate:
        epoch, weights = kept[step]
        selection.restore(model, weights)
        found = selection.measure(
            model,
            tokenizer,
            items,
            tuple(cfg.contexts),
            cfg.select_max_tokens,
            step,
            epoch,
            stop_over=stop_over,
        )
        if report is not None:
            report(event, **found.as_dict())
        return found

    start = degenerate = None
    if cfg.select_degenerate is not None:
        if selection.START in kept:
            start = measure_at(selection.START, None, "train.start_measured")
            degenerate = (start.degenerate or 0.0) + cfg.select_degenerate  # complete: a rate
        elif report is not None:  # said aloud: the step is then chosen on refusal alone
            report(
                "train.start_missing",
                reason="no adapter was kept before the first step, so degeneration is "
                "not bounded (select_degenerate ignored for this version)",
            )
    bounds = selection.Bounds(cfg.select_over_refusal, degenerate)
    best, candidates = selection.search(selection.trained_steps(kept), measure_at, bounds, start)
    selection.restore(model, kept[best.step][1])
    return best.step, candidates, start


PROGRESS_EVERY_S = 30.0


def progress_callback(
    report: Callable[..., None],
    every_s: float = PROGRESS_EVERY_S,
    cap_minutes: float | None = None,
) -> Any:
    """A transformers callback that reports the optimizer step, of how many,
    the last loss and the seconds so far and to go, at most every ``every_s``
    seconds and at the step training stops at (a CPU run can train for half an
    hour). ``cap_minutes``: the :func:`time_cap` in force, which the time to
    go counts (training stops after the first step ending past it)."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.start = self.last = time.perf_counter()
            capped = cap_minutes is not None and getattr(args, "world_size", 1) <= 1
            self.cap_s = cap_minutes * 60 if capped and cap_minutes is not None else None

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now, step, total = time.perf_counter(), state.global_step, state.max_steps
            stopping = step >= total or control.should_training_stop  # time_cap may stop it
            if now - self.last < every_s and not stopping:
                return
            self.last = now
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            elapsed = now - self.start
            eta: float | None = None
            if stopping:
                eta = 0.0
            elif step:
                per_step = elapsed / step
                eta = per_step * (total - step)
                if self.cap_s is not None:  # the step that crosses the cap is the last
                    eta = min(eta, max(self.cap_s - elapsed, 0.0) + per_step)
            report(
                "train.progress",
                step=step,
                steps=total,
                epoch=round(state.epoch or 0, 2),
                loss=round(losses[-1], 4) if losses else None,
                seconds=round(elapsed, 1),
                eta_s=None if eta is None else round(eta, 1),
            )

    return Progress()


def time_cap(minutes: float, report: Callable[..., None] | None = None) -> Any:
    """A transformers callback that stops training after the first optimizer
    step that ends ``minutes`` or more after training began, and reports
    ``train.time_cap`` (the step, of how many, the seconds). A constant
    learning rate is unaffected; a decaying one stops part-way down. With
    several training processes it is off, said once (``train.time_cap_off``):
    each rank would read its own clock, and one stopping a step before another
    would leave that one waiting in the gradients' all-reduce."""
    from transformers import TrainerCallback

    class TimeCap(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.off = getattr(args, "world_size", 1) > 1
            if self.off and report is not None:
                report(
                    "train.time_cap_off",
                    reason=f"trainer.max_train_minutes needs one training process, not "
                    f"{args.world_size}: every step is trained",
                    max_train_minutes=minutes,
                )
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            elapsed = time.perf_counter() - self.start
            if self.off or state.global_step >= state.max_steps or elapsed < minutes * 60:
                return
            control.should_training_stop = True
            if report is not None:
                report(
                    "train.time_cap",
                    step=state.global_step,
                    steps=state.max_steps,
                    epoch=round(state.epoch or 0, 3),
                    seconds=round(elapsed, 1),
                    max_train_minutes=minutes,
                )

    return TimeCap()


def _is_main_process(trainer: Any) -> bool:
    """Under ``accelerate launch`` every rank trains; only rank 0 writes."""
    return bool(trainer.accelerator.is_main_process)


def _dpo_trainer(  # type: ignore[no-untyped-def]
    model,
    tokenizer,
    pairs: list[PreferencePair],
    cfg: TrainerConfig,
    scratch: str,
    *,
    bf16: bool,
    cuda: bool,
    seed: int,
    new_adapter: bool = True,
):
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=scratch,
        beta=cfg.beta,
        # sft_weight > 0: DPO plus the chosen answers' NLL (RPO, Pang et al. 2024)
        loss_type=["sigmoid", "sft"] if cfg.sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight > 0 else None,
        # trl's default 1e-6 moves nothing in a short run; the config says what to use.
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_schedule,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        # trl defaults bf16=True, which fails on a CPU unless use_cpu is set.
        bf16=bf16,
        use_cpu=not cuda,
        # trl turns checkpointing on by default; on a CPU it only costs time.
        activation_checkpointing=(
            cuda if cfg.gradient_checkpointing == "auto" else cfg.gradient_checkpointing
        ),
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=seed,
        disable_tqdm=True,
    )
    peft_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=pairs_dataset(pairs, tuple(cfg.contexts)),
        processing_class=tokenizer,
        # A model that already carries the adapter (a continued lineage) trains it on.
        peft_config=peft_config if new_adapter else None,
    )
    # The worker logs structured events; HF's printer would interleave dicts.
    trainer.remove_callback(PrinterCallback)
    return trainer


def _quiet_progress_bars() -> None:
    """The trainer's stdout is a JSON log; progress bars only garble it."""
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    disable_progress_bar()
    hf_logging.disable_progress_bar()
