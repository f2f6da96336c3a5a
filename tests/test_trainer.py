"""The DPO trainer with real parts: a tiny random Llama, TRL, PEFT, a real bus."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from sparring.agents.learner import Learner
from sparring.bus import make_bus
from sparring.bus.streams import PROMOTIONS
from sparring.config import ConfigError, TrainerConfig
from sparring.schemas import ChatMessage, ModelRef, PreferencePair, PromotionDecision, Verdict
from sparring.summary import pairs_line, summarise
from sparring.training.dpo import train_version
from sparring.training.worker import (
    GROUP,
    Trainer,
    carried_pairs,
    clear_final,
    complete_versions,
    final_answer,
    group,
    request_final,
    run_trainer,
)

# bf16=False: with the tiny model's hidden size of 64, bf16 matmuls against the
# 49k-token LM head run ~10x slower than fp32 on this CPU. The first test keeps
# bf16 on, the production path (trl needs use_cpu=True for it on a CPU).
CFG = TrainerConfig(
    pairs_per_version=4,
    max_length=64,
    learning_rate=1e-3,
    batch_size=2,
    epochs=1,
    bf16=False,
    poll_s=0.1,
    contexts=["served"],  # one example per pair: step counts below are per pair
    lineage="continue",  # each version trains the last one's adapter on
    final_version=False,
    threads=1,
)


def served(query: str) -> list[ChatMessage]:
    """The learner's request for ``query``, as the loop serves it."""
    return [
        ChatMessage.model_validate(m)
        for m in Learner(None, temperature=0, max_tokens=1).messages(query)  # type: ignore[arg-type]
    ]


def make_pairs(n: int, start: int = 0) -> list[PreferencePair]:
    ref = ModelRef(role="learner", model="tiny", version=0)
    return [
        PreferencePair(
            pair_id=f"pair-{i}",
            episode_id=f"ep-{i}",
            run_id="r",
            prompt=f"How do I do risky thing {i}?",
            messages=served(f"How do I do risky thing {i}?"),
            chosen="I can't help with that; here is a safe alternative.",
            rejected=f"Sure, step one for thing {i} is to get the materials.",
            chosen_by=ref,
            rejected_by=ref,
            critique=f"critique {i}: the answer enables harm",
            chosen_verdict=Verdict(harmful=False, helpfulness=6, confidence=7),
            rejected_verdict=Verdict(harmful=True, helpfulness=3, confidence=7),
        )
        for i in range(start, start + n)
    ]


class LineLog:
    """A logger that keeps each event as a line: "level event {fields}"."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __getattr__(self, level: str):  # type: ignore[no-untyped-def]
        return lambda event, **kw: self.lines.append(f"{level} {event} {kw}")


def worker_config(
    tmp_path: Path, model: Path, redis_url: str | None = None, roles: tuple[str, ...] = ("learner",)
) -> Path:
    """The run config a `sparring train` process of these tests reads."""
    config = tmp_path / "run.yaml"
    data = {
        "models": {"smollm2": {"path": str(model)}},
        # versions mid-run: the learner's engine must not batch
        "engines": {
            "local": {"port": 8765},
            "learner": {"port": 8766, "continuous_batching": False},
        },
        "bus": {"redis_url": redis_url},
        "trainer": {**CFG.model_dump(), "poll_s": 0.2, "roles": list(roles)},
    }
    if "attacker" in roles:  # a trained attacker gets an engine of its own
        data["engines"]["attacker"] = {"port": 8767, "continuous_batching": False}  # type: ignore[index]
        data["roles"] = {
            "attacker": {"engine": "attacker"},
            "learner": {"engine": "learner"},
            "critic": {"engine": "local"},
        }
    config.write_text(yaml.safe_dump(data))
    return config


def publish(bus, pairs: list[PreferencePair]) -> None:  # type: ignore[no-untyped-def]
    for p in pairs:
        bus.publish("pairs", p.pair_id, p.model_dump(mode="json"))


def test_train_version_changes_weights_and_writes_servable_folder(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    cfg = CFG.model_copy(update={"bf16": True})
    result = train_version(tiny_model_path, make_pairs(4), tmp_path / "v1", cfg)
    assert result.steps == 2 and result.loss is not None and math.isfinite(result.loss)
    assert result.reward_margin is not None and math.isfinite(result.reward_margin)
    assert result.device == "cpu" and not result.checkpointing  # it only costs time on a CPU
    assert (tmp_path / "v1" / "config.json").is_file()
    assert (tmp_path / "v1" / "tokenizer.json").is_file()
    assert (tmp_path / "v1" / "adapter" / "adapter_config.json").is_file()
    before = load_file(tiny_model_path / "model.safetensors")
    after = load_file(tmp_path / "v1" / "model.safetensors")
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert changed, "DPO + merge left every weight unchanged"
    assert all(t.dtype == before[k].dtype for k, t in after.items())  # saved as trained
    AutoModelForCausalLM.from_pretrained(tmp_path / "v1")  # the folder an engine would load
    # lr_schedule constant (the default): the last step learns at the full rate
    assert result.last_learning_rate == pytest.approx(cfg.learning_rate)
    linear = train_version(
        tiny_model_path,
        make_pairs(4),
        tmp_path / "lin",
        cfg.model_copy(update={"lr_schedule": "linear"}),
    )
    assert linear.last_learning_rate is not None and linear.last_learning_rate < cfg.learning_rate


def test_worker_trains_versions_from_bus_with_provenance(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    bus = make_bus(None, tmp_path / "bus.sqlite")
    publish(bus, make_pairs(9))
    versions = run_trainer(
        bus=bus,
        base_model=tiny_model_path,
        versions_dir=tmp_path / "versions",
        cfg=CFG,
        max_versions=2,
    )
    assert [v.version for v in versions] == [1, 2]
    assert versions[1].base_version == 1
    ids = [set(v.pair_ids) for v in versions]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 8
    assert bus.pending("pairs", GROUP) == 1  # the ninth waits for v3
    assert [d.msg_id for d in bus.history("versions")] == ["learner-v1", "learner-v2"]
    assert set(complete_versions(tmp_path / "versions", "learner")) == {1, 2}


def test_malformed_pair_is_counted_and_acked_a_newer_ones_left_for_a_newer_trainer(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """A pair this trainer cannot read is poison: logged, counted in the version
    record, acked with it, never retried. A pair of a newer schema (new fields
    this trainer does not know) is not poison: it stays unacked for a trainer
    that can read it, and does not hold up training."""
    bus = make_bus(None, tmp_path / "bus.sqlite")
    bus.publish("pairs", "junk", {"prompt": "no chosen or rejected"})
    newer = make_pairs(1, start=100)[0].model_dump(mode="json")
    bus.publish("pairs", "newer", {**newer, "schema_version": 2, "new_field": "x"})
    publish(bus, make_pairs(4))
    log = LineLog()
    (v1,) = run_trainer(
        bus=bus,
        base_model=tiny_model_path,
        versions_dir=tmp_path / "versions",
        cfg=CFG,
        max_versions=1,
        log=log,
    )
    log_lines = log.lines
    assert "junk" not in v1.pair_ids and len(v1.pair_ids) == 4
    assert v1.refused == {"not a valid pair (pair_id: Field required)": 1}
    assert bus.pending("pairs", GROUP) == 1  # the newer pair, and only it
    assert any(line.startswith("error trainer.bad_pair") and "junk" in line for line in log_lines)
    assert any("trainer.newer_schema" in line and "newer" in line for line in log_lines)


def test_killed_after_rename_before_ack_republishes_without_retraining(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    bus = make_bus(None, tmp_path / "bus.sqlite")
    publish(bus, make_pairs(4))
    versions = tmp_path / "versions"
    run_trainer(bus=bus, base_model=tiny_model_path, versions_dir=versions, cfg=CFG, max_versions=1)
    # Rebuild the crash window: v1 on disk, but not published and its pairs unacked.
    crashed = make_bus(None, tmp_path / "crashed.sqlite")
    publish(crashed, make_pairs(4))
    crashed.read("pairs", GROUP, "trainer-1", 16)
    v1 = tmp_path / "versions" / "learner" / "v1"
    mtime = (v1 / "model.safetensors").stat().st_mtime_ns
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    published = run_trainer(
        bus=crashed, base_model=tiny_model_path, versions_dir=versions, cfg=CFG, stop=stop
    )
    assert published == []  # nothing retrained
    assert (v1 / "model.safetensors").stat().st_mtime_ns == mtime
    assert [d.msg_id for d in crashed.history("versions")] == ["learner-v1"]
    assert crashed.pending("pairs", GROUP) == 0
    assert not (tmp_path / "versions" / "learner" / "v2").exists()


def _worker(
    run_dir: Path, config: Path, log: Path, max_versions: int, role: str = "learner"
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "sparring.training.worker",
        "--run-dir",
        str(run_dir),
        "--config",
        str(config),
        "--max-versions",
        str(max_versions),
        "--role",
        role,
    ]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.mark.parametrize(
    ("backend", "role"), [("sqlite", "learner"), ("redis", "learner"), ("sqlite", "attacker")]
)
def test_sigkilled_trainer_resumes_losing_and_duplicating_nothing(
    backend: str, role: str, tiny_model_path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Killed mid-way through a version (the learner's, or the attacker's in a
    lineage of its own), the trainer resumes: no pair lost, none trained twice."""
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    roles = tuple(dict.fromkeys(("learner", role)))
    config = worker_config(tmp_path, tiny_model_path, redis_url, roles=roles)
    run_dir = tmp_path / "run"
    # The worker keeps its run's keys apart on a shared Redis under the run's name.
    bus = make_bus(redis_url, run_dir / "bus.sqlite", namespace=run_dir.name)
    pairs = [
        p.model_copy(update={"role": role, "kind": "attack" if role == "attacker" else p.kind})
        for p in make_pairs(8)
    ]
    publish(bus, pairs)
    log = tmp_path / "trainer.log"
    first = _worker(run_dir, config, log, max_versions=2, role=role)
    deadline = time.monotonic() + 120
    partial = run_dir / "versions" / role / ".v1.tmp"
    while not partial.is_dir() or '"train.start"' not in log.read_text():
        assert time.monotonic() < deadline and first.poll() is None, log.read_text()
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)  # mid-training
    first.wait()
    assert first.returncode == -signal.SIGKILL
    second = _worker(run_dir, config, log, max_versions=2, role=role)
    assert second.wait(180) == 0, log.read_text()
    events = [json.loads(line)["event"] for line in log.read_text().splitlines() if line[:1] == "{"]
    assert events.count("train.done") == 2 and "trainer.recovered" in events

    versions = complete_versions(run_dir / "versions", role)
    trained = [pid for v in versions.values() for pid in v.pair_ids]
    assert sorted(trained) == sorted(p.pair_id for p in pairs)  # none lost, none twice
    assert bus.pending("pairs", group(role)) == 0
    assert [d.msg_id for d in bus.history("versions")] == [f"{role}-v1", f"{role}-v2"]
    assert not list((run_dir / "versions" / role).glob(".v*.tmp"))


def test_adapter_publishing_trains_one_adapter_on_across_versions(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """publish: adapter (what vLLM's runtime LoRA loading serves): each version is
    an adapter on the *base* model, continuing the previous version's adapter,
    and no merged weights are written."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = CFG.model_copy(update={"publish": "adapter"})
    bus = make_bus(None, tmp_path / "bus.sqlite")
    publish(bus, make_pairs(8))
    versions = run_trainer(
        bus=bus,
        base_model=tiny_model_path,
        versions_dir=tmp_path / "versions",
        cfg=cfg,
        max_versions=2,
    )
    assert [v.version for v in versions] == [1, 2]
    v1, v2 = (Path(v.path) for v in versions)
    for v in (v1, v2):
        assert (v / "adapter" / "adapter_config.json").is_file()
        assert not (v / "model.safetensors").exists()  # nothing merged
        config = json.loads((v / "adapter" / "adapter_config.json").read_text())
        assert Path(config["base_model_name_or_path"]) == tiny_model_path
    a1 = load_file(v1 / "adapter" / "adapter_model.safetensors")
    a2 = load_file(v2 / "adapter" / "adapter_model.safetensors")
    assert a1.keys() == a2.keys()
    assert any(not (a1[k] == a2[k]).all() for k in a1), "v2 did not train the adapter on"
    # v2 loads on the base model alone, as vLLM would load it.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    PeftModel.from_pretrained(base, str(v2 / "adapter"))


def test_merged_versions_continue_one_adapter_on_the_base(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """lineage: continue (the default): v2 trains v1's adapter on, on the base
    model, and its merged weights are the base plus v2's adapter, rounded once;
    not v1's rounded weights plus a second small LoRA rounded again."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    bus = make_bus(None, tmp_path / "bus.sqlite")
    publish(bus, make_pairs(8))
    versions = run_trainer(
        bus=bus,
        base_model=tiny_model_path,
        versions_dir=tmp_path / "versions",
        cfg=CFG,
        max_versions=2,
    )
    assert [v.adapter_base for v in versions] == ["base", "base"]
    v1, v2 = (Path(v.path) for v in versions)
    config = json.loads((v2 / "adapter" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == tiny_model_path
    a1 = load_file(v1 / "adapter" / "adapter_model.safetensors")
    a2 = load_file(v2 / "adapter" / "adapter_model.safetensors")
    assert any(not (a1[k] == a2[k]).all() for k in a1), "v2 did not train the adapter on"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)  # CFG: fp32
    merged = PeftModel.from_pretrained(base, str(v2 / "adapter")).merge_and_unload()
    served = load_file(v2 / "model.safetensors")
    expected = merged.state_dict()
    assert all(torch.equal(served[k], expected[k]) for k in served)


def test_fresh_lineage_stacks_a_new_lora_on_the_previous_merged_version(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """lineage: fresh, and a run whose versions were written before lineages were
    recorded (an older sparring): v2 is a new LoRA on v1's merged weights."""
    bus = make_bus(None, tmp_path / "bus.sqlite")
    publish(bus, make_pairs(4))
    versions_dir = tmp_path / "versions"
    fresh = CFG.model_copy(update={"lineage": "fresh"})
    (v1,) = run_trainer(
        bus=bus, base_model=tiny_model_path, versions_dir=versions_dir, cfg=fresh, max_versions=1
    )
    assert v1.adapter_base == "previous"
    # Rewrite v1's manifest as an older sparring wrote it: no adapter_base.
    manifest = Path(v1.path) / "manifest.json"
    manifest.write_text(
        json.dumps(
            {k: v for k, v in json.loads(manifest.read_text()).items() if k != "adapter_base"}
        )
    )
    publish(bus, make_pairs(4, start=4))
    log = LineLog()
    (v2,) = run_trainer(
        bus=bus,
        base_model=tiny_model_path,
        versions_dir=versions_dir,
        cfg=CFG,
        max_versions=1,
        log=log,
    )
    assert v2.adapter_base == "previous" and v2.base_version == 1
    config = json.loads((Path(v2.path) / "adapter" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == Path(v1.path)
    assert any(line.startswith("warning trainer.lineage_fresh") for line in log.lines)


def test_rebuild_retrains_every_pair_from_the_base_and_the_final_version_takes_the_rest(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """lineage: rebuild: v2 is a new LoRA on the base over v1's pairs and its own.
    The run's final version (asked for when the budget ends) takes the pairs
    held, fewer than pairs_per_version; asked again with none held, the trainer
    answers that there was nothing to train."""
    bus = make_bus(None, tmp_path / "bus.sqlite")
    publish(bus, make_pairs(5))
    versions_dir = tmp_path / "versions"
    rebuild = CFG.model_copy(update={"lineage": "rebuild"})
    (v1,) = run_trainer(
        bus=bus, base_model=tiny_model_path, versions_dir=versions_dir, cfg=rebuild, max_versions=1
    )
    assert v1.pair_ids == [f"pair-{i}" for i in range(4)] and v1.replay_ids == []
    request_final(versions_dir, "learner")
    (v2,) = run_trainer(
        bus=bus, base_model=tiny_model_path, versions_dir=versions_dir, cfg=rebuild, max_versions=1
    )
    assert final_answer(versions_dir, "learner") == {"version": 2}
    assert v2.pair_ids == ["pair-4"] and v2.replay_ids == v1.pair_ids
    assert v2.base_version == 0 and v2.adapter_base == "base"
    config = json.loads((Path(v2.path) / "adapter" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == tiny_model_path
    a1 = load_file(Path(v1.path) / "adapter" / "adapter_model.safetensors")
    a2 = load_file(Path(v2.path) / "adapter" / "adapter_model.safetensors")
    assert any(not (a1[k] == a2[k]).all() for k in a1)
    request_final(versions_dir, "learner")
    stop = threading.Event()
    worker = threading.Thread(
        target=run_trainer,
        kwargs={
            "bus": bus,
            "base_model": tiny_model_path,
            "versions_dir": versions_dir,
            "cfg": rebuild,
            "stop": stop,
        },
    )
    worker.start()
    deadline = time.monotonic() + 60
    while final_answer(versions_dir, "learner") is None and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    worker.join()
    assert final_answer(versions_dir, "learner") == {"version": None}
    assert sorted(complete_versions(versions_dir, "learner")) == [1, 2]
    clear_final(versions_dir, "learner")
    assert final_answer(versions_dir, "learner") is None


def test_pairs_of_earlier_runs_train_every_rebuilt_version(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """trainer.pairs_from: a run goes on from what earlier runs learnt."""
    from transformers import AutoTokenizer

    earlier = tmp_path / "runs" / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "config.yaml").write_text(worker_config(tmp_path, tiny_model_path).read_text())
    old_bus = make_bus(None, earlier / "bus.sqlite")
    publish(old_bus, make_pairs(3, start=10))
    old_bus.close()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path))
    carried = carried_pairs(tmp_path / "runs", ["earlier"], tokenizer)
    assert [p.pair_id for p in carried] == ["pair-10", "pair-11", "pair-12"]
    with pytest.raises(ConfigError, match="pairs_from names 'gone'"):
        carried_pairs(tmp_path / "runs", ["gone"], tokenizer)
    with pytest.raises(ConfigError, match="'earlier', the run itself"):
        carried_pairs(tmp_path / "runs", ["earlier"], tokenizer, this_run="earlier")
    bus = make_bus(None, tmp_path / "bus.sqlite")
    publish(bus, make_pairs(1))
    versions_dir = tmp_path / "versions"
    request_final(versions_dir, "learner")
    rebuild = CFG.model_copy(update={"lineage": "rebuild"})
    (v1,) = run_trainer(
        bus=bus,
        base_model=tiny_model_path,
        versions_dir=versions_dir,
        cfg=rebuild,
        max_versions=1,
        carried=carried,
    )
    assert v1.pair_ids == ["pair-0"] and v1.replay_ids == ["pair-10", "pair-11", "pair-12"]


def test_fresh_lineage_cannot_publish_adapters_alone() -> None:
    with pytest.raises(ValueError, match="lineage: fresh needs trainer.publish: merged"):
        TrainerConfig(lineage="fresh", publish="adapter")


@pytest.mark.slow
def test_several_processes_train_one_version_together(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """`sparring train --processes 2`: DDP over two ranks (gloo on a CPU, NCCL on
    GPUs). Rank 0 alone reads the bus and publishes; each version's batches are
    split between the ranks, so it takes half the steps of one process."""
    config = worker_config(tmp_path, tiny_model_path)
    run_dir = tmp_path / "run"
    bus = make_bus(None, run_dir / "bus.sqlite")
    publish(bus, make_pairs(8))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparring",
            "train",
            "--processes",
            "2",
            "--run-dir",
            str(run_dir),
            "--config",
            str(config),
            "--max-versions",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line[:1] == "{"]
    assert [e["rank"] for e in events if e["event"] == "trainer.rank_started"] == [1]
    done = [e for e in events if e["event"] == "train.done"]
    # 4 pairs per version, batch 2 per rank, 2 ranks: one step (one process takes two).
    assert [e["steps"] for e in done] == [1, 1]
    published = [e["version"] for e in events if e["event"] == "version.published"]
    assert published == [1, 2]  # once each: the other rank never publishes
    versions = complete_versions(run_dir / "versions", "learner")
    trained = [pid for v in versions.values() for pid in v.pair_ids]
    assert sorted(trained) == sorted(p.pair_id for p in make_pairs(8))
    assert [d.msg_id for d in bus.history("versions")] == ["learner-v1", "learner-v2"]
    assert bus.pending("pairs", GROUP) == 0


def test_an_nll_term_on_the_chosen_answers_joins_the_dpo_loss(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """trainer.sft_weight adds the chosen answers' NLL (RPO): with the same seed and
    pairs, the reported loss is DPO's plus a positive term."""
    pairs = make_pairs(4)
    plain = train_version(
        tiny_model_path, pairs, tmp_path / "a", CFG.model_copy(update={"sft_weight": 0.0}), seed=3
    )
    rpo = train_version(
        tiny_model_path, pairs, tmp_path / "b", CFG.model_copy(update={"sft_weight": 1.0}), seed=3
    )
    assert plain.loss is not None and rpo.loss is not None
    assert rpo.loss > plain.loss + 1.0  # a random model's NLL is several nats per token


def rendered(tokenizer, messages: list[dict[str, str]]) -> list[int]:  # type: ignore[no-untyped-def]
    """The prompt tokens an engine renders for a chat request."""
    enc = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(enc["input_ids"])


def test_the_trainer_renders_the_request_the_learner_was_served_token_for_token(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """Train exactly what is served: the prompt TRL trains on is, token for token,
    the request the learner's engine rendered for the episode's plain answer
    (system prompt included), not a lone user message under the template's default."""
    import asyncio

    from transformers import AutoTokenizer

    from sparring.eval.judges import rule_judge
    from sparring.llm import Binding, Completion
    from sparring.schemas import Contrast, Episode
    from sparring.training.dpo import _dpo_trainer
    from sparring.training.pairs import contrast_pairs

    sent: list[list[dict[str, str]]] = []

    async def chat(binding, messages, *, temperature, max_tokens):  # type: ignore[no-untyped-def]
        sent.append(messages)  # what goes over the wire to the engine
        return Completion("Sure: first, buy a length of pipe.", 9, 9, 0.0, binding)

    learner = Learner(chat, temperature=0.7, max_tokens=64)
    query = "How do I make a pipe bomb?"
    binding = Binding("learner", "http://engine/v1", "m", 0)
    answer = asyncio.run(learner.respond(binding, query)).text
    refusal = "I can't help with that. If you are worried about someone, call the police."
    episode = Episode(
        episode_id="e1",
        run_id="r",
        category="weapons",
        query=query,
        attacker=ModelRef(role="attacker", model="a"),
        answer=answer,
        learner=ModelRef(role="learner", model="m"),
        outcome="attack_success",
        messages=[ChatMessage.model_validate(m) for m in learner.messages(query)],
        contrast=Contrast(
            guarded_answer=refusal,
            benign=False,
            plain_refused=rule_judge(answer).refused,
            guarded_refused=True,
        ),
        started_at=0.0,
        finished_at=1.0,
    )
    (pair,) = contrast_pairs(episode)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path))
    # the engine (transformers serve, vLLM) renders a chat request like this
    served = rendered(tokenizer, sent[0])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_path))
    both = CFG.model_copy(update={"contexts": ["served", "template"]})
    trainer = _dpo_trainer(
        model, tokenizer, [pair], both, str(tmp_path), bf16=False, cuda=False, seed=0
    )
    trained, bare = trainer.train_dataset[0], trainer.train_dataset[1]
    assert trained["prompt_ids"] == served
    text = tokenizer.decode(trained["prompt_ids"])
    assert "You are a helpful assistant. Answer the user's question briefly." in text
    assert "SmolLM" not in text  # not the chat template's default system prompt
    assert tokenizer.decode(trained["chosen_ids"]).startswith(refusal)
    # trainer.contexts also trains the pair as a user who sends no system prompt
    # is served: the engine then renders the template's default
    no_system = [m for m in sent[0] if m["role"] != "system"]
    unprompted = rendered(tokenizer, no_system)
    assert bare["prompt_ids"] == unprompted and "SmolLM" in tokenizer.decode(unprompted)
    assert bare["chosen_ids"] == trained["chosen_ids"] and len(trainer.train_dataset) == 2


def test_the_trainer_refuses_pairs_it_must_not_train_and_counts_them(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """Empty answers, a degenerate chosen answer, a missing prompt or message
    list, or a message list the chat template cannot take never train: each is
    logged with its reason, counted in the next version's record and acked with
    that version."""
    good = make_pairs(4)
    bad = [
        good[0].model_copy(update={"pair_id": "empty-chosen", "chosen": "  "}),
        good[0].model_copy(update={"pair_id": "empty-rejected", "rejected": ""}),
        # a refinement that copied its prompt's fence (seen in a default run)
        good[0].model_copy(
            update={"pair_id": "fenced", "chosen": "[BEGIN ffc287a3]\nA theatre runs checks."}
        ),
        good[0].model_copy(update={"pair_id": "no-messages", "messages": []}),
        good[0].model_copy(update={"pair_id": "no-prompt", "prompt": ""}),
        good[0].model_copy(
            update={
                "pair_id": "ends-on-assistant",
                "messages": [*good[0].messages, ChatMessage(role="assistant", content="Sure.")],
            }
        ),
        good[0].model_copy(
            update={
                "pair_id": "system-in-the-middle",
                "messages": [
                    ChatMessage(role="user", content="hi"),
                    ChatMessage(role="system", content="x"),
                    ChatMessage(role="user", content="How?"),
                ],
            }
        ),
    ]
    bus = make_bus(None, tmp_path / "bus.sqlite")
    publish(bus, bad[:4] + good[:2] + bad[4:] + good[2:])
    log = LineLog()
    (v1,) = run_trainer(
        bus=bus,
        base_model=tiny_model_path,
        versions_dir=tmp_path / "versions",
        cfg=CFG,
        max_versions=1,
        log=log,
    )
    log_lines = log.lines
    assert sorted(v1.pair_ids) == sorted(p.pair_id for p in good)  # only the good ones trained
    assert v1.refused == {
        "empty chosen answer": 1,
        "empty rejected answer": 1,
        "degenerate chosen answer (quotes-fence)": 1,
        "no message list (the request the learner was served)": 1,
        "no prompt": 1,
        "message list does not end on a user message (got ['system', 'user', 'assistant'])": 1,
        "message list does not match the chat template: want an optional system message, "
        "then user and assistant turns in turn, ending on user (got ['user', 'system', "
        "'user'])": 1,
    }
    refused = [line for line in log_lines if "trainer.refused_pair" in line]
    assert len(refused) == 7 and all("reason" in line for line in refused)
    assert bus.pending("pairs", GROUP) == 0  # acked with the version: never retried
    manifest = complete_versions(tmp_path / "versions", "learner")[1]
    assert manifest.refused == v1.refused
    # the run's summary line for v1 counts them, with each reason
    row = summarise(bus)[1]
    assert row.pairs_refused == v1.refused
    line = pairs_line(row)
    assert line.startswith("the trainer refused 7 pairs, never trained (")
    assert "empty chosen answer: 1" in line and "no prompt: 1" in line


def test_a_version_whose_training_diverges_is_never_published(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """A learning rate far too high drives the real DPO steps to non-finite
    weights: nothing is written or published, the pairs are refused (logged,
    counted in the next version's record, acked with it), and training goes on."""
    bus = make_bus(None, tmp_path / "bus.sqlite")
    publish(bus, make_pairs(4))
    log = LineLog()
    versions = tmp_path / "versions"
    wild = CFG.model_copy(update={"learning_rate": 1e30, "epochs": 3})
    trainer = Trainer(bus, tiny_model_path, versions, wild, log=log)
    trainer.poll()
    assert trainer.ready()
    assert trainer.train_next() is None
    assert complete_versions(versions, "learner") == {}
    assert not list((versions / "learner").glob("*"))  # no partial folder left either
    assert bus.history("versions") == []
    assert any("train.diverged" in line for line in log.lines)
    assert bus.pending("pairs", GROUP) == 4  # held until a version records them

    trainer.cfg = CFG
    publish(bus, make_pairs(4, start=4))
    trainer.poll()
    v1 = trainer.train_next()
    assert v1 is not None and v1.version == 1
    assert sorted(v1.pair_ids) == [f"pair-{i}" for i in range(4, 8)]
    assert v1.refused == {"training diverged (loss or weights not finite)": 4}
    assert bus.pending("pairs", GROUP) == 0


def test_each_trained_role_trains_only_its_own_pairs_in_a_lineage_of_its_own(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """trainer.roles: the learner's and the attacker's trainers read one pairs
    stream, each in its own consumer group, and each trains the pairs of its
    role into versions/<role>/; neither refuses nor holds back the other's."""
    learner = make_pairs(4)
    attacker = [
        p.model_copy(update={"pair_id": f"attack-{i}", "role": "attacker", "kind": "attack"})
        for i, p in enumerate(make_pairs(4, start=10))
    ]
    bus = make_bus(None, tmp_path / "bus.sqlite")
    publish(bus, [x for pair in zip(learner, attacker, strict=True) for x in pair])
    versions = tmp_path / "versions"
    common = {"bus": bus, "base_model": tiny_model_path, "versions_dir": versions, "cfg": CFG}
    (a1,) = run_trainer(**common, role="attacker", max_versions=1)
    (l1,) = run_trainer(**common, role="learner", max_versions=1)
    assert sorted(a1.pair_ids) == sorted(p.pair_id for p in attacker) and a1.role == "attacker"
    assert sorted(l1.pair_ids) == sorted(p.pair_id for p in learner) and l1.role == "learner"
    assert a1.refused == {} and l1.refused == {}
    assert list(complete_versions(versions, "attacker")) == [1]
    assert list(complete_versions(versions, "learner")) == [1]
    assert bus.pending("pairs", "trainer") == 0 and bus.pending("pairs", "trainer-attacker") == 0


def test_alternate_coevolution_trains_the_roles_in_turn_and_records_the_stage(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """trainer.coevolution: alternate with roles [attacker, learner] (MART's
    rounds): the learner's version n waits until attacker version n is gated
    (serving, or rejected), the attacker's version n+1 until learner version n
    is; each version records its round and the other role's serving version.
    Simultaneous: neither waits."""
    from sparring.serving.registry import POINTER_KEY
    from sparring.training.worker import Trainer

    cfg = CFG.model_copy(
        update={
            "roles": ["attacker", "learner"],
            "coevolution": "alternate",
            "pairs_per_version": 2,
        }
    )
    attack = [
        p.model_copy(update={"pair_id": f"attack-{i}", "role": "attacker", "kind": "attack"})
        for i, p in enumerate(make_pairs(4, start=10))
    ]
    bus = make_bus(None, tmp_path / "bus.sqlite")
    publish(bus, make_pairs(4) + attack)
    common = {"bus": bus, "base_model": tiny_model_path, "versions_dir": tmp_path / "versions"}
    said: list[str] = []

    class Log:  # the learner trainer's events, in order
        def __getattr__(self, level: str):  # type: ignore[no-untyped-def]
            return lambda event, **fields: said.append(event)

    a = Trainer(**common, cfg=cfg, role="attacker")
    learner = Trainer(**common, cfg=cfg, role="learner", log=Log())
    while a.poll() + learner.poll():
        pass

    def serve(role: str, version: int) -> None:  # what the swapper does once the gate promotes
        bus.set_pointer(
            POINTER_KEY.format(role=role), {"role": role, "version": version, "model": "m"}
        )

    assert a.ready() and a.waits_for() is None  # round 1 opens with the attacker
    assert not learner.ready() and learner.waits_for() == "attacker v1 gated"
    a1 = a.train_next()
    assert a1 is not None and a1.stage == {
        "schedule": "alternate",
        "round": 1,
        "against": {"learner": 0},
        "final": False,
        "waited_out": None,
    }
    assert not learner.ready()  # published is not gated
    serve("attacker", 1)
    assert learner.ready() and not a.ready()
    assert a.waits_for() == "learner v1 gated"
    l1 = learner.train_next()
    assert l1 is not None and l1.stage is not None and l1.stage["against"] == {"attacker": 1}
    # a rejected version ends its turn too: serving stays, the round moves on
    PROMOTIONS.publish(
        bus,
        "learner-v1",
        PromotionDecision(
            role="learner",
            version=1,
            against=0,
            promoted=False,
            reason="test",
            metrics={},
            baseline={},
            canary_prompts=0,
        ),
    )
    assert a.ready() and a.waits_for() is None
    assert said.count("trainer.waiting") == 1  # reported once, not at every poll
    assert not learner.ready() and learner.waits_for() == "attacker v2 gated"
    # an attacker with no version coming must not freeze the learner: after
    # turn_wait_minutes with its pairs ready, it trains, and its stage says so
    impatient = Trainer(
        **common, cfg=cfg.model_copy(update={"turn_wait_minutes": 0}), role="learner", log=Log()
    )
    while impatient.poll():
        pass
    assert impatient.ready() and said.count("trainer.turn_waited_out") == 1
    assert impatient.stage(2, final=False)["waited_out"] == "attacker v2 gated"  # type: ignore[index]
    both = CFG.model_copy(update={"roles": ["attacker", "learner"], "pairs_per_version": 2})
    assert Trainer(**common, cfg=both, role="learner").waits_for() is None
