"""What the local hardware does fast, so "auto" settings pick the faster path.

Measured on two 2-core CPU kinds (see README, "Speed"): with AVX512-BF16 or AMX
the engine runs SmolLM2 ~2x faster in bf16 than in fp32; on an AVX2-only CPU
bf16 is emulated and fp32 is ~1.4x faster at batch 8.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@cache
def fast_bf16(device: str = "cpu") -> bool:
    """True when bf16 matmuls are native on ``device`` ("cpu", "cuda" or "auto")."""
    if device in ("cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            return bool(torch.cuda.is_bf16_supported())
        if device == "cuda":
            return False
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def resolve_dtype(dtype: str, device: str = "cpu") -> Literal["bfloat16", "float32"]:
    """``auto`` becomes bf16 where it is native, else float32; others pass through."""
    if dtype == "auto":
        return "bfloat16" if fast_bf16(device) else "float32"
    return "bfloat16" if dtype == "bfloat16" else "float32"
