import asyncio
import shutil
from pathlib import Path

import pytest

from sparring.agents import Binding, OpenAIChat
from sparring.bus import make_bus
from sparring.config import EngineConfig
from sparring.schemas import VersionPublished
from sparring.serving.models import build_tiny_model
from sparring.serving.registry import Registry, Swapper
from sparring.tracing import Tracer


def _registry(tmp_path: Path, engine: EngineConfig, base: Path) -> tuple[Registry, object]:
    bus = make_bus(None, tmp_path / "bus.sqlite")
    binding = Binding("learner", engine.url(), str(base), 0)
    return Registry(bus, {"learner": binding}), bus


def test_pointer_flips_only_after_engine_serves_new_version(
    tiny_model_path: Path, smollm2_path: Path, seq_engine: EngineConfig, tmp_path: Path
) -> None:
    v1 = build_tiny_model(tmp_path / "v1", tokenizer_from=smollm2_path, seed=1)
    registry, bus = _registry(tmp_path, seq_engine, tiny_model_path)
    tracer = Tracer(tmp_path, "swap-test")
    chat = OpenAIChat(timeout_s=60)
    swapper = Swapper(bus, registry, chat, tracer.log, group="swapper")

    held = registry.acquire("learner")  # an episode that started on v0
    published = VersionPublished(
        role="learner", version=1, path=str(v1), base_version=0, pair_ids=[]
    )
    bus.publish("versions", "learner-v1", published.model_dump(mode="json"))

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(swapper.run(stop, poll_s=0.1))
        for _ in range(300):
            if registry.binding("learner").version == 1:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await task
        # The held binding still names v0, and v0 still answers on the engine.
        out = await chat(held, [{"role": "user", "content": "hi"}], temperature=0, max_tokens=2)
        assert out.binding.version == 0 and out.completion_tokens > 0
        await chat.aclose()

    asyncio.run(go())
    now = registry.binding("learner")
    assert now.version == 1 and now.model == str(v1)
    assert held.version == 0 and registry.in_flight[("learner", 0)] == 1
    assert bus.pending("versions", "swapper") == 0
    log = (tmp_path / "trace.jsonl").read_text()
    assert '"swap.flipped"' in log and '"in_flight_previous": 1' in log


def test_a_version_the_engine_cannot_load_is_never_flipped(
    tiny_model_path: Path, seq_engine: EngineConfig, tmp_path: Path
) -> None:
    broken = tmp_path / "v1"
    shutil.copytree(tiny_model_path, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    registry, bus = _registry(tmp_path, seq_engine, tiny_model_path)
    swapper = Swapper(
        bus,
        registry,
        OpenAIChat(timeout_s=30, max_retries=0),
        Tracer(tmp_path, "t").log,
        group="swapper",
    )
    published = VersionPublished(
        role="learner", version=1, path=str(broken), base_version=0, pair_ids=[]
    )
    with pytest.raises(Exception):  # noqa: B017 - whatever the engine answers, it is not a success
        asyncio.run(swapper.swap(published))
    assert registry.binding("learner").version == 0
    assert '"swap.failed"' in (tmp_path / "trace.jsonl").read_text()
