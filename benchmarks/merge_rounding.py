"""How much of each version's trained update survives in the weights that are served.

A merged version is saved in the dtype it was trained in (bf16 on a CPU with
native bf16). Rounding ``W + BA * alpha/r`` to bf16 keeps about three
significant digits of W, so a small LoRA update is partly lost. For each
version of a run this compares the served weights' change over the weights the
adapter was trained on (the base model, or the previous version for a run with
``trainer.lineage: fresh``) with the adapter's own update, in fp32:

- ``relative_error``: ||served change - adapter update|| / ||adapter update||
  over all adapted matrices (0: nothing lost; 1: as large as the update);
- ``cosine``: mean cosine similarity of the two, matrix by matrix;
- ``update_size``: ||adapter update|| / ||W|| (how small the update is).

    python3 benchmarks/merge_rounding.py target11                 # runs/target11
    python3 benchmarks/merge_rounding.py target11 target12 \
        --out benchmarks/results/merge_rounding.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from sparring.config import load_config
from sparring.training.worker import complete_versions, learner_base


def weights(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def measure(served: Path, trained_on: Path) -> dict[str, Any]:
    adapter = served / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    before, after = weights(trained_on), weights(served)
    err2 = upd2 = w2 = 0.0
    cosines = []
    for key, a in lora.items():
        if "lora_A" not in key:
            continue
        b = lora[key.replace("lora_A", "lora_B")]
        name = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        update = (b.float() @ a.float()) * scale
        change = after[name].float() - before[name].float()
        err2 += float((change - update).norm() ** 2)
        upd2 += float(update.norm() ** 2)
        w2 += float(before[name].float().norm() ** 2)
        if update.norm() > 0:
            cosines.append(float((change * update).sum() / (change.norm() * update.norm() + 1e-30)))
    return {
        "relative_error": round(math.sqrt(err2 / upd2), 4) if upd2 else 0.0,
        "cosine": round(sum(cosines) / len(cosines), 4) if cosines else 1.0,
        "update_size": round(math.sqrt(upd2 / w2), 6) if w2 else 0.0,
        "served_dtype": str(next(iter(after.values())).dtype).removeprefix("torch."),
    }


def measure_run(run_dir: Path) -> dict[str, Any]:
    cfg = load_config(run_dir / "config.yaml")
    base = Path(learner_base(cfg))
    versions = complete_versions(run_dir / "versions", "learner")
    rows = {}
    for n, v in versions.items():
        served = Path(v.path)
        if not (served / "model.safetensors").is_file():
            continue  # publish: adapter; nothing merged
        relative_to_base = v.adapter_base == "base"
        trained_on = (
            base
            if relative_to_base or not v.base_version
            else (Path(versions[v.base_version].path))
        )
        rows[f"v{n}"] = {
            "adapter_relative_to": "base" if relative_to_base else f"v{v.base_version}",
            **measure(served, trained_on),
        }
        print(f"[merge] {run_dir.name} v{n}: {rows[f'v{n}']}", file=sys.stderr)
    continued = all(v.adapter_base == "base" for v in versions.values())
    return {"lineage": "continue" if continued else "fresh", "versions": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = {"runs": {r: measure_run(args.runs_dir / r) for r in args.run_ids}}
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
