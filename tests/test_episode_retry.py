"""An engine that stops answering mid-run: the episodes it held are retried
from their last checkpoint once it answers again, not dropped.

The learner's engine is a real `transformers serve` process of its own; mid-run
it is stopped (its requests fail) and, a few seconds later, started again on
the same port, as a supervisor would restart a crashed server. (Freezing it
with SIGSTOP instead shows the same retries, but a thawed `transformers serve`
sometimes stays stuck on the requests its clients gave up on.)
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from sparring.bus import make_bus
from sparring.config import EngineConfig
from sparring.runner import Loop
from sparring.serving.engine import EngineProcess
from tests.helpers import tiny_config, trace_events

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_episodes_on_an_engine_that_stops_answering_are_retried_not_dropped(
    tiny_model_path: Path, engine: EngineConfig, seq_engine: EngineConfig, tmp_path: Path
) -> None:
    learner_cfg = EngineConfig(port=_free_port(), continuous_batching=False, startup_timeout_s=120)
    cfg = tiny_config(
        tiny_model_path, engine, seq_engine, tmp_path,
        budget__episodes=6, loop__concurrency=2, loop__episode_attempts=6,
    )  # fmt: skip
    engines = {**cfg.engines, "crashing": EngineConfig(
        kind="external", managed=False, port=learner_cfg.port)}  # fmt: skip
    roles = dict(cfg.roles)
    # 3 s per request; the client tries 3 times: an episode fails within ~10 s
    roles["learner"] = roles["learner"].model_copy(update={"engine": "crashing", "timeout_s": 3.0})
    cfg = cfg.model_copy(update={"engines": engines, "roles": roles})
    run_dir = tmp_path / "runs" / "retry"
    froze: list[int] = []

    with EngineProcess("crashing", learner_cfg, tmp_path / "crashing.log") as proc:
        pid = proc.pid
        assert pid is not None

        async def crash_once() -> None:
            """Stop the learner's engine once the first episode is under way, and
            start it again 5 s later."""
            trace = run_dir / "trace.jsonl"
            while not (trace.is_file() and '"node": "attack"' in trace.read_text()):
                await asyncio.sleep(0.05)
            await asyncio.to_thread(proc.stop)
            froze.append(pid)
            await asyncio.sleep(5.0)
            await asyncio.to_thread(proc.start)

        async def go() -> None:
            crasher = asyncio.create_task(crash_once())
            try:
                await Loop(cfg, run_dir, progress=False).run()
            finally:
                crasher.cancel()

        asyncio.run(go())

    assert froze, "the engine was never stopped"
    events = trace_events(run_dir)
    retried = [e for e in events if e.get("event") == "episode.retrying"]
    assert retried, "no episode failed while the engine was down: the test proved nothing"
    failed = [e for e in events if e.get("event") == "episode.failed"]
    assert not failed, [(e["ts"], e["episode_id"], e["error"]) for e in failed + retried]
    bus = make_bus(None, run_dir / "bus.sqlite")
    finished = {d.msg_id for d in bus.history("episodes")}
    assert len(finished) == 6  # every task became an episode: none dropped
    assert {e["episode_id"] for e in retried} <= finished
    assert bus.pending("tasks", "orchestrators") == 0
