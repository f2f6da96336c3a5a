"""The vLLM client and the LoRA / full-weight hot swap, against vLLM 0.33's
request and response shapes (tests/vllm_shapes.py); vLLM itself needs a GPU."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sparring.agents import Binding, OpenAIChat
from sparring.bus import make_bus
from sparring.schemas import VersionPublished
from sparring.serving.loaders import FullLoader, LoraLoader
from sparring.serving.registry import Registry, RoleServing, Swapper
from sparring.serving.vllm import VLLMAdmin, VLLMError
from sparring.tracing import Tracer
from tests.vllm_shapes import Cluster

LB = "http://vllm/v1"
REPLICAS = ["http://gpu-a:8000/v1", "http://gpu-b:8000/v1"]


def version_dir(root: Path, n: int) -> Path:
    """What the trainer publishes with publish: adapter (vN/adapter/)."""
    d = root / "versions" / "learner" / f"v{n}"
    (d / "adapter").mkdir(parents=True, exist_ok=True)
    (d / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 8}))
    return d


def published(root: Path, n: int) -> VersionPublished:
    return VersionPublished(
        role="learner", version=n, path=str(version_dir(root, n)), base_version=n - 1,
        pair_ids=[f"p{n}"],
    )  # fmt: skip


def test_admin_calls_follow_vllm_shapes(tmp_path: Path) -> None:
    cluster = Cluster("gpu-a")
    adapter = version_dir(tmp_path, 1) / "adapter"

    async def go() -> None:
        async with cluster.httpx_client() as http:
            admin = VLLMAdmin(http, "http://gpu-a:8000/v1")
            assert await admin.load_lora_adapter("learner-v1", str(adapter)) is True
            # A re-delivered announcement: already loaded is not an error.
            assert await admin.load_lora_adapter("learner-v1", str(adapter)) is False
            cards = await admin.models()
            assert {c["id"]: c["parent"] for c in cards} == {"base": None, "learner-v1": "base"}
            assert await admin.unload_lora_adapter("learner-v1") is True
            assert await admin.unload_lora_adapter("learner-v1") is False  # already gone
            with pytest.raises(VLLMError) as err:
                await admin.load_lora_adapter("learner-v9", str(tmp_path / "missing"))
            assert err.value.status == 404 and "No adapter found" in err.value.message

    asyncio.run(go())
    method, path, body = cluster.servers["gpu-a"].calls[0]
    assert (method, path) == ("POST", "/v1/load_lora_adapter")
    assert body == {"lora_name": "learner-v1", "lora_path": str(adapter)}


def _swapper(tmp_path: Path, cluster: Cluster, http, loader, **kw):  # type: ignore[no-untyped-def]
    bus = make_bus(None, tmp_path / "bus.sqlite")
    registry = Registry(bus, {"learner": Binding("learner", LB, "base", 0)})
    chat = OpenAIChat(timeout_s=10, max_retries=0, http_client=cluster.httpx2_client())
    swapper = Swapper(
        bus, registry, chat, Tracer(tmp_path, "vllm-swap").log, group="swapper",
        serving={"learner": RoleServing(loader(http), list(REPLICAS))}, **kw,
    )  # fmt: skip
    return swapper, registry, bus, chat


def test_lora_swap_loads_and_warms_every_replica_before_the_flip(tmp_path: Path) -> None:
    cluster = Cluster("gpu-a", "gpu-b")

    async def go() -> None:
        async with cluster.httpx_client() as http:
            swapper, registry, _, chat = _swapper(tmp_path, cluster, http, LoraLoader)
            ptr = await swapper.swap(published(tmp_path, 1))
            assert ptr is not None and ptr.model == "learner-v1"
            now = registry.binding("learner")
            # Episodes keep using the load-balanced address; they name the adapter.
            assert (now.base_url, now.model, now.version) == (LB, "learner-v1", 1)
            await chat.aclose()

    asyncio.run(go())
    for host in ("gpu-a", "gpu-b"):
        server = cluster.servers[host]
        assert server.adapters == {"learner-v1": str(version_dir(tmp_path, 1) / "adapter")}
        paths = [(p, b.get("model")) for _, p, b in server.calls]
        # Loaded first, then a request naming the adapter answered on this replica.
        assert paths == [("/v1/load_lora_adapter", None), ("/v1/chat/completions", "learner-v1")]


def test_a_replica_that_cannot_load_keeps_the_pointer_where_it_was(tmp_path: Path) -> None:
    cluster = Cluster("gpu-a", "gpu-b")
    cluster.servers["gpu-b"].refuse_loads = True

    async def go() -> None:
        async with cluster.httpx_client() as http:
            swapper, registry, _, chat = _swapper(tmp_path, cluster, http, LoraLoader)
            with pytest.raises(VLLMError):
                await swapper.swap(published(tmp_path, 1))
            assert registry.binding("learner").version == 0
            assert registry.binding("learner").model == "base"
            await chat.aclose()

    asyncio.run(go())
    log = (tmp_path / "trace.jsonl").read_text()
    assert '"swap.failed"' in log and "gpu-b" in log and '"swap.flipped"' not in log


def test_keep_window_unloads_old_adapters_on_all_replicas_once_unheld(tmp_path: Path) -> None:
    cluster = Cluster("gpu-a", "gpu-b")

    async def go() -> None:
        async with cluster.httpx_client() as http:
            swapper, registry, bus, chat = _swapper(
                tmp_path, cluster, http, LoraLoader, keep_versions=2, unload_after_s=60
            )
            for n in (1, 2):
                await swapper.swap(published(tmp_path, n))
                bus.publish("versions", f"learner-v{n}", published(tmp_path, n).model_dump())
            held = registry.acquire("learner", "ep-slow")  # an episode still on v2
            assert held.version == 2
            await swapper.swap(published(tmp_path, 3))
            bus.publish("versions", "learner-v3", published(tmp_path, 3).model_dump())
            v3_at = published(tmp_path, 3).published_at
            # v1 is out of the window (keep 2: v3, v2) but was replaced < 60 s ago.
            assert await swapper.collect(now=v3_at) == []
            assert await swapper.collect(now=v3_at + 3600) == [1]
            assert await swapper.collect(now=v3_at + 3600) == []  # done once
            await swapper.swap(published(tmp_path, 4))
            bus.publish("versions", "learner-v4", published(tmp_path, 4).model_dump())
            # v2 is out of the window now, but an episode of this process holds it.
            assert await swapper.collect(now=v3_at + 7200) == []
            registry.release("ep-slow")
            assert await swapper.collect(now=v3_at + 7200) == [2]
            await chat.aclose()

    asyncio.run(go())
    for server in cluster.servers.values():
        assert sorted(server.adapters) == ["learner-v3", "learner-v4"]
    assert (tmp_path / "trace.jsonl").read_text().count('"swap.unloaded"') == 2


def test_full_weight_swap_drains_reloads_and_resumes(tmp_path: Path) -> None:
    cluster = Cluster("gpu-a", "gpu-b")
    v1 = published(tmp_path, 1)

    async def go() -> None:
        async with cluster.httpx_client() as http:
            swapper, registry, _, chat = _swapper(
                tmp_path, cluster, http, lambda h: FullLoader(h, served_name="base")
            )
            ptr = await swapper.swap(v1)
            # The served name stays; the pointer records which weights it has.
            assert ptr is not None and (ptr.model, ptr.version) == ("base", 1)
            await chat.aclose()

    asyncio.run(go())
    for server in cluster.servers.values():
        assert server.weights == v1.path and not server.paused
        assert [p for _, p, _ in server.calls] == [
            "/pause?mode=wait", "/collective_rpc", "/reset_prefix_cache", "/resume",
            "/v1/chat/completions",
        ]  # fmt: skip
        rpc = server.calls[1][2]
        assert rpc["method"] == "reload_weights" and rpc["kwargs"] == {"weights_path": v1.path}
