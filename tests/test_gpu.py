"""What needs a CUDA GPU: run by scripts/test.sh wherever one is visible
(deselected with -m "not gpu" elsewhere, never skipped silently)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sparring.config import TrainerConfig
from sparring.training.dpo import train_version
from tests.test_trainer import make_pairs

pytestmark = pytest.mark.gpu


def test_trainer_on_cuda_uses_bf16_and_gradient_checkpointing(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    import torch

    assert torch.cuda.is_available(), "gpu tests need CUDA (scripts/test.sh deselects them)"
    cfg = TrainerConfig(pairs_per_version=4, max_length=64, learning_rate=1e-3, batch_size=2)
    result = train_version(tiny_model_path, make_pairs(4), tmp_path / "v1", cfg)
    assert result.device == "cuda" and result.checkpointing
    assert result.bf16 == torch.cuda.is_bf16_supported()
    assert result.steps == 2 and result.loss is not None and math.isfinite(result.loss)
    assert (tmp_path / "v1" / "adapter" / "adapter_config.json").is_file()


def test_adapter_versions_train_on_cuda(tiny_model_path: Path, tmp_path: Path) -> None:
    cfg = TrainerConfig(
        pairs_per_version=4, max_length=64, learning_rate=1e-3, batch_size=2, publish="adapter"
    )
    first = train_version(tiny_model_path, make_pairs(4), tmp_path / "v1", cfg)
    second = train_version(
        tiny_model_path, make_pairs(4, start=4), tmp_path / "v2", cfg,
        adapter_from=tmp_path / "v1" / "adapter",
    )  # fmt: skip
    assert first.device == second.device == "cuda"
    assert (tmp_path / "v2" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "v2" / "model.safetensors").exists()
