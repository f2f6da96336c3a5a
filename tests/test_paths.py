"""Paths and names from outside are checked before they reach the file system:
a version announced on the bus is loaded only from inside the run's versions
directory, and run names, run ids, consumer and engine names are plain names."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sparring.agents import Binding
from sparring.bus import make_bus
from sparring.cli import main
from sparring.config import ConfigError, load_config
from sparring.schemas import PromotionDecision, VersionPublished
from sparring.serving.registry import Registry, Swapper
from sparring.tracing import Tracer
from tests.helpers import trace_events
from tests.test_bad_input import one_line_error, unmanaged_config

ENGINE = "http://127.0.0.1:9/v1"


class Engine:
    """The far side of the swapper's chat: records the model each request names."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, binding: Binding, messages: Any, **_: Any) -> None:
        self.asked.append(binding.model)


class RejectAll:
    """A canary gate that rejects every candidate (so the swapper writes rejected.json)."""

    async def check(self, role: str, candidate: Binding, serving: Binding) -> PromotionDecision:
        return PromotionDecision(
            role=role,
            version=candidate.version,
            against=serving.version,
            promoted=False,
            reason="test",
            metrics={},
            baseline={},
            canary_prompts=0,
        )


def _run(tmp_path: Path, pinned: dict[str, int] | None = None) -> tuple[Path, Registry, Any]:
    run_dir = tmp_path / "runs" / "r1"
    (run_dir / "versions" / "learner").mkdir(parents=True)
    bus = make_bus(None, run_dir / "bus.sqlite")
    base = {r: Binding(r, ENGINE, f"{r}-base", 0) for r in ("learner", "critic")}
    registry = Registry(bus, base, pinned=pinned, versions_dir=run_dir / "versions")
    return run_dir, registry, bus


def _announce(bus: Any, version: int, path: Path | str, role: str = "learner") -> None:
    v = VersionPublished(role=role, version=version, path=str(path), base_version=0, pair_ids=[])
    bus.publish("versions", f"{role}-v{version}", v.model_dump(mode="json"))


def _swap_until(swapper: Swapper, done: Callable[[], bool]) -> None:
    """Run the swapper until ``done()`` (each announcement handled), at most 20 s."""

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(swapper.run(stop, poll_s=0.05))
        for _ in range(400):
            await asyncio.sleep(0.05)
            if done():
                break
        stop.set()
        await task

    asyncio.run(go())


def _events(run_dir: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in trace_events(run_dir) if e["event"] == name]


def _outside(tmp_path: Path, run_dir: Path) -> dict[str, Path | str]:
    """Announced folders that are not the run's own: each exists, with a model's config."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("{}")
    link = run_dir / "versions" / "learner" / "v3"
    link.symlink_to(elsewhere, target_is_directory=True)
    return {
        "absolute": elsewhere,
        "dot-dot": f"{run_dir}/versions/learner/../../../../elsewhere",
        "link": link,
        "other-role": run_dir / "versions" / "critic" / "v4",
    }


def test_versions_announced_outside_the_runs_versions_are_refused_never_loaded(
    tmp_path: Path,
) -> None:
    run_dir, registry, bus = _run(tmp_path)
    outside = _outside(tmp_path, run_dir)
    (run_dir / "versions" / "critic" / "v4").mkdir(parents=True)
    for n, path in enumerate(outside.values(), 1):
        _announce(bus, n, path)
    _announce(bus, 5, run_dir / "versions" / "learner" / "v5", role="../learner")
    tracer = Tracer(run_dir, "paths")
    engine = Engine()
    swapper = Swapper(bus, registry, engine, tracer.log, group="swapper")
    _swap_until(swapper, lambda: len(_events(run_dir, "swap.refused")) == 5)
    tracer.close()
    assert engine.asked == []  # no engine was asked to load any of them
    assert registry.binding("learner").version == 0
    assert bus.pending("versions", "swapper") == 0  # acked: not retried forever
    refused = _events(run_dir, "swap.refused")
    assert [e["version"] for e in refused] == [1, 2, 3, 4, 5]
    assert all("is not inside" in e["error"] for e in refused)
    assert f"{run_dir / 'versions'}/learner/" in refused[0]["error"]


def test_a_rejected_version_outside_the_run_gets_no_file_written(tmp_path: Path) -> None:
    run_dir, registry, bus = _run(tmp_path)
    link = _outside(tmp_path, run_dir)["link"]
    _announce(bus, 3, link)
    tracer = Tracer(run_dir, "paths")
    engine = Engine()
    swapper = Swapper(bus, registry, engine, tracer.log, group="swapper", gate=RejectAll())
    _swap_until(swapper, lambda: bool(_events(run_dir, "swap.refused") or engine.asked))
    tracer.close()
    assert engine.asked == []
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["config.json"]
    assert bus.pending("versions", "swapper") == 0


def test_a_version_inside_the_run_is_loaded_and_served(tmp_path: Path) -> None:
    run_dir, registry, bus = _run(tmp_path)
    v1 = run_dir / "versions" / "learner" / "v1"
    v1.mkdir()
    _announce(bus, 1, v1)
    tracer = Tracer(run_dir, "paths")
    engine = Engine()
    swapper = Swapper(bus, registry, engine, tracer.log, group="swapper")
    _swap_until(swapper, lambda: registry.binding("learner").version == 1)
    tracer.close()
    assert engine.asked == [str(v1)]
    assert registry.binding("learner").version == 1


def test_a_pinned_role_never_binds_a_version_announced_outside(tmp_path: Path) -> None:
    run_dir, registry, bus = _run(tmp_path, pinned={"critic": 1})
    _announce(bus, 1, _outside(tmp_path, run_dir)["absolute"])
    assert registry.binding("critic").model == "critic-base"
    inside = run_dir / "versions" / "learner" / "v2"
    _announce(bus, 2, inside)
    registry.pinned["critic"] = 2
    assert registry.binding("critic").model == str(inside)


# -- names that become paths ---------------------------------------------------------

BAD_NAMES = ["../../tmp/escape", "a/b", ".hidden", "-flag", "", "with space", "x" * 101]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_run_name_that_is_not_a_plain_name_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(f"run_name: {json.dumps(name)}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "run_name:" in msg
    assert "letters, digits, '.', '_' and '-', not starting with '.' or '-'" in msg


def test_plain_run_names_and_engine_names_are_accepted_and_others_refused(tmp_path: Path) -> None:
    for name in ("default", "my_run.2", "Run-7-x", "x" * 100):
        assert load_config(None, {"run_name": name}).run_name == name
    path = tmp_path / "run.yaml"
    path.write_text("engines: {'../gpu': {port: 8000}}\n")
    with pytest.raises(ConfigError, match=r"engines\.\.\./gpu\.\[key\]: Value error, must be"):
        load_config(path)


@pytest.mark.parametrize(
    ("flag", "env"), [("--run-id", "SPARRING_RUN_ID"), ("--consumer", "SPARRING_CONSUMER")]
)
def test_run_id_and_consumer_that_leave_the_run_directory_are_refused(
    tmp_path: Path, flag: str, env: str
) -> None:
    cfg = unmanaged_config(tmp_path)
    runner = CliRunner()
    # runs_dir is tmp_path/runs: run id ../escape would be tmp_path/escape
    for how in ({"args": [flag, "../escape"]}, {"env": {env: "../escape"}}):
        args = ["run", "-c", str(cfg), "--no-progress", *how.get("args", [])]
        result = runner.invoke(main, args, env=how.get("env"))
        assert result.exit_code == 2
        one_line_error(result, f"Invalid value for '{flag}'", "'../escape' must be")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]  # nothing written


def test_the_trainers_consumer_name_is_checked_before_the_bus_is_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sparring.training.worker import main as worker_main

    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    # a damaged bus: were the name taken, opening the bus would fail instead
    (run_dir / "bus.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(SystemExit) as err:
        worker_main(["--run-dir", str(run_dir), "--consumer", "../x"])
    assert err.value.code == 2
    assert "argument --consumer: '../x' must be 1-100 letters" in capsys.readouterr().err
    assert [p.name for p in run_dir.iterdir()] == ["bus.sqlite"]
