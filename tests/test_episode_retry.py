"""An engine that stops answering mid-run: the episodes it held are retried
from their last checkpoint once it answers again, not dropped.

The learner's engine is a real `transformers serve` process of its own; mid-run
it is killed (SIGKILL: its requests fail) and, a few seconds later, started again on
the same port, as a supervisor would restart a crashed server. (Freezing it
with SIGSTOP instead shows the same retries, but a thawed `transformers serve`
sometimes stays stuck on the requests its clients gave up on.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from sparring.bus import make_bus
from sparring.config import EngineConfig
from sparring.orchestrator import Loop
from sparring.process import free_port
from sparring.serving.engine import EngineProcess
from tests.helpers import tiny_config, trace_events

pytestmark = pytest.mark.slow


def test_episodes_on_an_engine_that_stops_answering_are_retried_not_dropped(
    tiny_model_path: Path, engine: EngineConfig, seq_engine: EngineConfig, tmp_path: Path
) -> None:
    learner_cfg = EngineConfig(port=free_port(), continuous_batching=False, startup_timeout_s=120)
    cfg = tiny_config(
        tiny_model_path,
        engine,
        seq_engine,
        tmp_path,
        # enough that the run cannot end while the engine is being stopped (6 once
        # did, under a loaded CPU: the stop came after the last episode)
        budget__episodes=12,
        loop__concurrency=2,
        loop__episode_attempts=6,
    )
    engines = {
        **cfg.engines,
        "crashing": EngineConfig(kind="external", managed=False, port=learner_cfg.port),
    }
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
            # a crash (SIGKILL): under SIGTERM the server finishes what it holds,
            # and on a loaded CPU it served the rest of the run while shutting
            # down (the run ended before the stop returned)
            await asyncio.to_thread(proc.kill)
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
    assert len(finished) == 12  # every task became an episode: none dropped
    assert {e["episode_id"] for e in retried} <= finished
    assert bus.pending("tasks", "orchestrators") == 0


def test_an_unreachable_engine_spends_no_attempt_an_episode_error_does() -> None:
    """A connection that never reached a model (an engine restarting) makes the
    episode wait, however long the outage; errors of the episode's own count
    toward ``loop.episode_attempts``."""
    import httpx
    import openai
    import structlog

    from sparring.orchestrator.scheduling import OUTAGE_WAIT_MAX_S, EpisodeBook

    book = EpisodeBook(attempts=2)
    ctx = SimpleNamespace(log=structlog.get_logger())
    request = httpx.Request("POST", f"http://127.0.0.1:{free_port()}/v1/chat/completions")
    down = openai.APIConnectionError(request=request)
    waits = [book.retry_in(ctx, "ep1", down, "episode.retrying") for _ in range(8)]  # type: ignore[arg-type]
    assert waits[:3] == [5.0, 10.0, 20.0] and max(w or 0 for w in waits) == OUTAGE_WAIT_MAX_S
    timeout = openai.APITimeoutError(request=request)  # reached the engine; it did not answer
    assert book.retry_in(ctx, "ep1", timeout, "episode.retrying") == 5.0  # type: ignore[arg-type]
    assert book.retry_in(ctx, "ep1", ValueError("bad"), "episode.retrying") is None  # type: ignore[arg-type]
    assert "ep1" not in book.failures and "ep1" not in book.outages
