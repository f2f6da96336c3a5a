"""Real models for tests: the bundled SmolLM2 (converted once) and a tiny random one."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparring.serving.models import build_tiny_model, cache_dir, pull_smollm2


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return pull_smollm2(progress=False)


@pytest.fixture(scope="session")
def tiny_model_path(smollm2_path: Path) -> Path:
    """A 2-layer randomly initialised Llama with SmolLM2's tokenizer (~6 MB)."""
    return build_tiny_model(cache_dir() / "models" / "tiny-test", tokenizer_from=smollm2_path)


@pytest.fixture(scope="session")
def tiny_vllm_model_path(smollm2_path: Path) -> Path:
    """The tiny model with a head size vLLM's CPU attention has kernels for (64)."""
    return build_tiny_model(
        cache_dir() / "models" / "tiny-vllm", tokenizer_from=smollm2_path, head_dim=64
    )
