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
    # one pass, one context: 4 examples in steps of 2
    cfg = TrainerConfig(
        pairs_per_version=4,
        max_length=64,
        learning_rate=1e-3,
        batch_size=2,
        epochs=1,
        contexts=["served"],
    )
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
        tiny_model_path,
        make_pairs(4, start=4),
        tmp_path / "v2",
        cfg,
        adapter_from=tmp_path / "v1" / "adapter",
    )
    assert first.device == second.device == "cuda"
    assert (tmp_path / "v2" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "v2" / "model.safetensors").exists()


def test_vllm_on_cuda_serves_a_trained_version_through_one_hot_swap(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """The compose path's engine: real vLLM (CUDA build) with runtime LoRA; a
    version the trainer wrote is loaded, warmed and flipped to."""
    import asyncio

    import httpx

    from sparring.agents import Binding, OpenAIChat
    from sparring.bus import make_bus
    from sparring.config import EngineConfig
    from sparring.process import free_port
    from sparring.schemas import VersionPublished
    from sparring.serving.engine import EngineProcess
    from sparring.serving.loaders import LoraLoader
    from sparring.serving.registry import Registry, RoleServing, Swapper
    from sparring.tracing import Tracer

    cfg = TrainerConfig(
        pairs_per_version=4, max_length=64, learning_rate=1e-3, batch_size=2, publish="adapter"
    )
    train_version(tiny_model_path, make_pairs(4), tmp_path / "v1", cfg)
    engine = EngineConfig(
        kind="vllm",
        device="cuda",
        port=free_port(),
        max_model_len=512,
        startup_timeout_s=900,
        extra_args=["--gpu-memory-utilization", "0.2"],
    )
    v1 = VersionPublished(
        role="learner",
        version=1,
        path=str(tmp_path / "v1"),
        base_version=0,
        pair_ids=["p"],
        adapter_base="base",
    )

    async def go() -> None:
        bus = make_bus(None, tmp_path / "bus.sqlite")
        url = engine.url()
        registry = Registry(bus, {"learner": Binding("learner", url, "base", 0)})
        chat = OpenAIChat(timeout_s=120, max_retries=0)
        async with httpx.AsyncClient(timeout=120) as http:
            serving = {"learner": RoleServing(LoraLoader(http, max_rank=16))}
            swapper = Swapper(
                bus, registry, chat, Tracer(tmp_path, "gpu").log, group="s", serving=serving
            )
            ptr = await swapper.swap(v1)
            assert ptr is not None and ptr.model == "learner-v1"
            answer = await chat(
                registry.binding("learner"),
                [{"role": "user", "content": "Hello"}],
                temperature=0.0,
                max_tokens=4,
            )
            assert answer.completion_tokens > 0
        await chat.aclose()

    with EngineProcess(
        "gpu-vllm", engine, tmp_path / "vllm.log", model=str(tiny_model_path), served_name="base"
    ):
        asyncio.run(go())
