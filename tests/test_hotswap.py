import asyncio
import shutil
from pathlib import Path

import pytest

from sparring.agents import Binding, OpenAIChat
from sparring.bus import make_bus
from sparring.config import EngineConfig
from sparring.schemas import VersionPublished
from sparring.serving.loaders import PathLoader
from sparring.serving.models import build_tiny_model
from sparring.serving.registry import Registry, RoleServing, Swapper
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

    held = registry.acquire("learner", "ep-held")  # an episode that started on v0
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


def test_every_replica_serves_the_version_before_the_pointer_moves(
    tiny_model_path: Path,
    smollm2_path: Path,
    seq_engine: EngineConfig,
    seq_engine_b: EngineConfig,
    tmp_path: Path,
) -> None:
    """Two real engines as replicas of the learner's engine: the swap warms the
    new version on each (a load reaches only the replica that answers it)."""
    v1 = build_tiny_model(tmp_path / "v1", tokenizer_from=smollm2_path, seed=11)
    registry, bus = _registry(tmp_path, seq_engine, tiny_model_path)
    real = OpenAIChat(timeout_s=60, max_retries=0)
    seen: list[tuple[str, str, str]] = []

    async def chat(binding: Binding, messages, **kw):  # type: ignore[no-untyped-def]
        out = await real(binding, messages, **kw)  # the real engine answers
        seen.append(("answered", binding.base_url, binding.model))
        return out

    replicas = [seq_engine.url(), seq_engine_b.url()]
    swapper = Swapper(
        bus,
        registry,
        chat,
        Tracer(tmp_path, "replicas").log,
        group="swapper",
        serving={"learner": RoleServing(PathLoader(), replicas)},
        on_flip=lambda ptr: seen.append(("flipped", "", ptr.model)),
    )
    published = VersionPublished(
        role="learner", version=1, path=str(v1), base_version=0, pair_ids=[]
    )

    async def go() -> None:
        ptr = await swapper.swap(published)
        assert ptr is not None and ptr.version == 1
        await real.aclose()

    asyncio.run(go())
    assert seen == [
        ("answered", replicas[0], str(v1)),
        ("answered", replicas[1], str(v1)),
        ("flipped", "", str(v1)),
    ]
    assert '"replicas": 2' in (tmp_path / "trace.jsonl").read_text()


def test_an_unreachable_replica_keeps_the_pointer(
    tiny_model_path: Path, smollm2_path: Path, seq_engine: EngineConfig, tmp_path: Path
) -> None:
    from sparring.process import free_port

    v1 = build_tiny_model(tmp_path / "v1", tokenizer_from=smollm2_path, seed=12)
    registry, bus = _registry(tmp_path, seq_engine, tiny_model_path)
    chat = OpenAIChat(timeout_s=10, max_retries=0)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    swapper = Swapper(
        bus,
        registry,
        chat,
        Tracer(tmp_path, "dead-replica").log,
        group="swapper",
        serving={"learner": RoleServing(PathLoader(), [seq_engine.url(), dead])},
    )
    published = VersionPublished(
        role="learner", version=1, path=str(v1), base_version=0, pair_ids=[]
    )
    with pytest.raises(Exception):  # noqa: B017 - a connection error, whatever its class
        asyncio.run(swapper.swap(published))
    assert registry.binding("learner").version == 0
    log = (tmp_path / "trace.jsonl").read_text()
    assert '"swap.failed"' in log and dead in log


def test_keep_window_on_the_cpu_engine(
    tiny_model_path: Path, smollm2_path: Path, seq_engine: EngineConfig, tmp_path: Path
) -> None:
    """The same keep-window decisions as on vLLM; transformers serve has no
    per-model unload, so a retired version is left to its idle timeout."""
    registry, bus = _registry(tmp_path, seq_engine, tiny_model_path)
    chat = OpenAIChat(timeout_s=60, max_retries=0)
    swapper = Swapper(
        bus,
        registry,
        chat,
        Tracer(tmp_path, "keep").log,
        group="swapper",
        serving={"learner": RoleServing(PathLoader())},
        keep_versions=1,
        unload_after_s=0,
    )

    async def go() -> None:
        for n in (1, 2):
            path = build_tiny_model(tmp_path / f"v{n}", tokenizer_from=smollm2_path, seed=20 + n)
            pub = VersionPublished(
                role="learner", version=n, path=str(path), base_version=n - 1, pair_ids=[]
            )
            if n == 1:
                await swapper.swap(pub)
                registry.acquire("learner", "ep-on-v1")
            else:
                await swapper.swap(pub)
            bus.publish("versions", f"learner-v{n}", pub.model_dump(mode="json"))
        assert [v.version for v in swapper.retirable("learner")] == []  # v1 is held
        registry.release("ep-on-v1")
        assert [v.version for v in swapper.retirable("learner")] == [1]
        assert await swapper.collect() == [1]
        await chat.aclose()

    asyncio.run(go())
    assert '"swap.unloaded"' not in (tmp_path / "trace.jsonl").read_text()  # nothing to call


def test_a_role_bound_to_latest_follows_the_learners_swaps(tmp_path: Path) -> None:
    """roles.critic.version: latest (the learner critiquing itself): the critic is
    served from whatever version the learner pointer names, and moves with it."""
    bus = make_bus(None, tmp_path / "bus.sqlite")
    url = "http://127.0.0.1:8766/v1"
    base = {r: Binding(r, url, "/models/base", 0) for r in ("learner", "critic", "attacker")}
    registry = Registry(bus, base, follow_learner=frozenset({"critic"}))
    assert registry.binding("critic") == base["critic"]
    registry.flip("learner", 2, "/versions/learner/v2")
    assert registry.binding("critic") == Binding("critic", url, "/versions/learner/v2", 2)
    assert registry.binding("attacker") == base["attacker"]  # base: never moves


def test_latest_must_be_bound_where_the_versions_live(tmp_path: Path) -> None:
    from sparring.config import ConfigError, load_config

    p = tmp_path / "run.yaml"
    p.write_text(
        "roles:\n  attacker: {}\n  learner: {engine: learner}\n"
        "  critic: {engine: local, model: smollm2, version: latest}\n"
    )
    with pytest.raises(ConfigError, match=r"roles.critic.version is 'latest'.*engine 'learner'"):
        load_config(p)
    ok = load_config(None, {"roles.critic.engine": "learner", "roles.critic.version": "latest"})
    assert ok.roles["critic"].version == "latest"
    pinned = load_config(None, {"roles.critic.engine": "learner", "roles.critic.version": 3})
    assert pinned.roles["critic"].version == 3
    with pytest.raises(ConfigError, match=r"roles.critic.version"):
        load_config(None, {"roles.critic.engine": "learner", "roles.critic.version": 0})


def test_a_role_pinned_to_a_version_stays_there_and_is_never_unloaded(tmp_path: Path) -> None:
    """roles.critic.version: 2 (e.g. judge with a frozen earlier learner)."""
    bus = make_bus(None, tmp_path / "bus.sqlite")
    url = "http://127.0.0.1:8766/v1"
    base = {r: Binding(r, url, "/models/base", 0) for r in ("learner", "critic")}
    registry = Registry(bus, base, pinned={"critic": 2})
    assert registry.binding("critic") == base["critic"]  # v2 is not out yet
    swapper = Swapper(
        bus,
        registry,
        OpenAIChat(),
        Tracer(tmp_path, "pin").log,
        group="swapper",
        serving={"learner": RoleServing(PathLoader())},
        keep_versions=1,
        unload_after_s=0,
    )
    for n in (1, 2, 3, 4):
        pub = VersionPublished(
            role="learner", version=n, path=f"/v/learner/v{n}", base_version=n - 1, pair_ids=[]
        )
        bus.publish("versions", f"learner-v{n}", pub.model_dump(mode="json"))
        registry.flip("learner", n, pub.path)
    assert registry.binding("critic") == Binding("critic", url, "/v/learner/v2", 2)
    assert registry.binding("learner").version == 4
    # keep 1 (v4): v1..v3 are out of the window, but the pinned v2 stays loaded
    assert [v.version for v in swapper.retirable("learner")] == [1, 3]


def test_a_malformed_announcement_is_reported_once_and_acked_a_newer_one_held(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """Garbage on the versions stream cannot become loadable by retrying: it is
    reported once and acked. An announcement of a newer schema is not garbage:
    it stays unacked for a swapper that can read it, reported once."""
    bus = make_bus(None, tmp_path / "bus.sqlite")
    registry = Registry(bus, {"learner": Binding("learner", "http://127.0.0.1:9", "m", 0)})
    swapper = Swapper(
        bus,
        registry,
        OpenAIChat(timeout_s=5, max_retries=0),
        Tracer(tmp_path, "t").log,
        group="swapper",
        retry_s=0.2,
    )
    bus.publish("versions", "junk", {"role": "learner", "version": "three"})
    newer = VersionPublished(
        role="learner", version=1, path=str(tiny_model_path), base_version=0, pair_ids=[]
    ).model_dump(mode="json")
    bus.publish("versions", "newer", {**newer, "schema_version": 2, "signed_by": "x"})

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(swapper.run(stop, poll_s=0.05))
        await asyncio.sleep(1.5)  # several polls and retry periods
        stop.set()
        await task

    asyncio.run(go())
    events = (tmp_path / "trace.jsonl").read_text()
    assert events.count('"swap.bad_announcement"') == 1
    assert events.count('"swap.newer_schema"') == 1
    assert bus.pending("versions", "swapper") == 1  # the newer one, held
    assert registry.binding("learner").version == 0
