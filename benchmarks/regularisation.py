"""Which regularisation keeps the learner healthy? Train one version per setting
on the same pairs, then measure each on the held-out suites.

Takes a finished run's trainable preference pairs (those the trainer would
accept, plus any named with ``--keep``), trains one LoRA version per setting
from the base model (TRL DPO, as the loop's trainer does, one round over all
pairs), and evaluates the base and every version with ``sparring eval``'s
machinery under both system-prompt conditions (served, template): harmful
refused, look-alikes refused, discrimination, degenerate answers (rule judge),
competence (the run's critic) and accuracy (questions with reference answers).
The versions live in a scratch run directory beside the source run
(``<run>-reg``, or ``--scratch``), so the source run is left alone. Prints and
writes JSON.

    python3 benchmarks/regularisation.py target10
    python3 benchmarks/regularisation.py target10 --setting lr=1e-3,beta=0.1,sft=1 \\
        --setting lr=5e-4,beta=0.1,sft=1
    python3 benchmarks/regularisation.py RUN --keep PAIR_ID --skip-eval   # with a refused pair

A setting's keys: lr, beta, sft (the NLL weight), r (the LoRA rank; alpha is
twice it), epochs, minutes (trainer.max_train_minutes), tokens
(trainer.select_max_tokens); unnamed ones keep the source run's trainer config.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

from _common import write_result  # benchmarks/, beside this file

from sparring.bus import make_bus
from sparring.eval.report import by_version, figures
from sparring.eval.runner import EVAL_DIR, EvalOptions, Evaluation, run_config
from sparring.eval.suites import SHIPPED, load_suite
from sparring.schemas import PreferencePair, VersionPublished
from sparring.serving.models import COMPLETE_MARKER
from sparring.training.dpo import pair_problem, train_version
from sparring.training.worker import MANIFEST, learner_base

DEFAULT_SETTINGS = (
    "lr=1.5e-3,beta=0.1,sft=1,r=8",  # the default profile
    "lr=1.5e-3,beta=0.3,sft=1,r=8",  # anchored closer to the reference model
    "lr=1.5e-3,beta=0.1,sft=0,r=8",  # plain DPO, no NLL on the chosen answers
    "lr=1.5e-3,beta=0.1,sft=1,r=16",  # a larger LoRA
)
KEYS = {
    "lr": "learning_rate",
    "beta": "beta",
    "sft": "sft_weight",
    "r": "lora_r",
    "epochs": "epochs",
    "minutes": "max_train_minutes",
    "tokens": "select_max_tokens",
}
INTS = ("r", "epochs", "tokens")


def parse(setting: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in setting.split(","):
        key, _, value = part.partition("=")
        if key not in KEYS:
            known = ", ".join(KEYS)
            raise SystemExit(f"--setting {setting!r}: unknown key {key!r} (known: {known})")
        out[KEYS[key]] = int(value) if key in INTS else float(value)
    if "lora_r" in out:
        out["lora_alpha"] = 2 * out["lora_r"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished run id under --runs-dir")
    ap.add_argument(
        "--setting",
        action="append",
        default=None,
        metavar="lr=..,beta=..,sft=..,r=..,tokens=..",
        help="one version's trainer settings (repeat for more): lr, beta, sft (the NLL "
        "weight), r (LoRA rank), epochs, minutes (max_train_minutes), tokens "
        "(select_max_tokens); the rest as the source run's",
    )
    ap.add_argument(
        "--kinds",
        default="conformity,competence,refine",
        help="pair kinds to train on (comma-separated)",
    )
    ap.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="PAIR_ID",
        help="train this pair even if the trainer refuses it (an ablation: what did it teach?)",
    )
    ap.add_argument(
        "--skip-eval", action="store_true", help="train only (the selection is still recorded)"
    )
    ap.add_argument(
        "--scratch", default="reg", help="the scratch run is <run>-<SCRATCH> (default: reg)"
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="training seed (the loop trains version n with seed n)"
    )
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/regularisation.json"))
    args = ap.parse_args()
    settings = args.setting or list(DEFAULT_SETTINGS)
    src = args.runs_dir / args.run
    cfg = run_config(src)
    base = learner_base(cfg)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    bus = make_bus(None, src / "bus.sqlite", namespace=src.name)
    kinds = set(args.kinds.split(","))
    pairs = [
        p
        for d in bus.history("pairs")
        if (p := PreferencePair.model_validate(d.payload)).kind in kinds
        and (pair_problem(p, tokenizer) is None or p.pair_id in args.keep)
    ]
    if missing := set(args.keep) - {p.pair_id for p in pairs}:
        raise SystemExit(f"--keep: no pair {sorted(missing)} of kinds {sorted(kinds)} in {src}")
    bus.close()
    scratch = args.runs_dir / f"{args.run}-{args.scratch}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    shutil.copy(src / "config.yaml", scratch / "config.yaml")
    # the base model's answers are the source run's (same suites and settings):
    # stored results are reused, not measured again
    for stored in (src / EVAL_DIR).glob("*/v0*.json"):
        dest = scratch / EVAL_DIR / stored.parent.name / stored.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(stored, dest)
    out: dict[str, Any] = {
        "run_id": args.run,
        "pairs": len(pairs),
        "kept_though_refused": args.keep,
        "seed": args.seed,
        "pair_kinds": {k: sum(p.kind == k for p in pairs) for k in kinds},
        "settings": {},
    }
    for n, setting in enumerate(settings, 1):
        tcfg = cfg.trainer.model_copy(update=parse(setting))
        vdir = scratch / "versions" / "learner" / f"v{n}"
        result = train_version(base, pairs, vdir, tcfg, seed=args.seed)
        manifest = VersionPublished(
            role="learner",
            version=n,
            path=str(vdir.resolve()),
            base_version=0,
            pair_ids=[p.pair_id for p in pairs],
            train_loss=result.loss,
            train_seconds=result.seconds,
        )
        (vdir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        (vdir / COMPLETE_MARKER).write_text("ok\n")
        out["settings"][f"v{n}"] = {
            "setting": setting,
            "steps": result.steps,
            "train_loss": result.loss,
            # trainer.select_epoch: the step published and each measured candidate
            "step": result.step,
            "selection": list(result.selection),
            # the model trained from, measured as the candidates (select_degenerate)
            "selection_start": result.selection_start,
        }
    if args.skip_eval:
        write_result(out, args.out)
        return
    suites = [load_suite(name) for name in SHIPPED]
    wanted = tuple(str(n) for n in range(len(settings) + 1))
    for system in ("served", "template"):
        opts = EvalOptions(versions=wanted, system=system, critic_on=("competence",), batch=True)
        started = time.time()
        metrics = by_version(asyncio.run(Evaluation(scratch, cfg, suites, opts).run()))
        for n, m in metrics.items():
            key = "base" if n == 0 else f"v{n}"
            out["settings"].setdefault(key, {"setting": "base model"})[system] = figures(m)
        out[f"{system}_eval_s"] = round(time.time() - started, 1)
    write_result(out, args.out)


if __name__ == "__main__":
    main()
