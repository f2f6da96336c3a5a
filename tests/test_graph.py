import asyncio
import json
from pathlib import Path

import pytest

from sparring.bus import make_bus
from sparring.config import EngineConfig
from sparring.graphs import BUILTIN, build_graph, langgraph_spec, list_graphs
from sparring.orchestrator import Loop
from sparring.orchestrator import loop as orchestrator_loop
from sparring.orchestrator.scheduling import Scheduler
from sparring.schemas import Episode
from tests.helpers import tiny_config, trace_events

SNAPSHOTS = Path(__file__).parent / "snapshots"


@pytest.mark.parametrize("name", BUILTIN)
def test_graph_shape_is_locked(name: str) -> None:
    mermaid = build_graph(name).get_graph().draw_mermaid()
    assert mermaid == (SNAPSHOTS / f"{name}.mmd").read_text()


def test_langgraph_json_lists_exactly_the_registered_builtin_graphs() -> None:
    """langgraph.json is what `sparring graph langgraph-json` writes from the registry."""
    spec = json.loads((Path(__file__).parent.parent / "langgraph.json").read_text())
    assert spec == langgraph_spec()
    registered = [s.name for s in list_graphs() if s.source.startswith("sparring/graphs/")]
    assert list(spec["graphs"]) == registered == list(BUILTIN)
    assert spec["graphs"] == {n: f"./sparring/graphs/{n}.py:graph" for n in BUILTIN}


def test_episodes_run_on_a_real_engine_and_every_node_traces(
    tiny_model_path: Path, engine: EngineConfig, seq_engine: EngineConfig, tmp_path: Path
) -> None:
    cfg = tiny_config(tiny_model_path, engine, seq_engine, tmp_path)
    run_dir = tmp_path / "runs" / "r1"
    rows = asyncio.run(Loop(cfg, run_dir, progress=False).run())

    bus = make_bus(None, run_dir / "bus.sqlite")
    episodes = [Episode.model_validate(d.payload) for d in bus.history("episodes")]
    assert len(episodes) == 4
    assert sum(r.episodes for r in rows) == 4
    events = trace_events(run_dir)
    for ep in episodes:
        nodes = [e["node"] for e in events if e.get("episode_id") == ep.episode_id]
        expected = ["attack", "respond", "critique"]
        if ep.outcome == "judge_error":
            # An unreadable verdict is explicit and never refined into a pair.
            assert ep.critique.verdict is None and ep.critique.judge_error
            assert ep.refined_critique is None
        else:
            expected += ["refine", "critique_refined"]
        assert nodes == [*expected, "emit"]
        for e in events:
            if e.get("episode_id") == ep.episode_id and e["node"] != "emit":
                assert e["run_id"] == "r1" and e["role"] in ("attacker", "learner", "critic")
                assert e["latency_s"] >= 0 and e["completion_tokens"] > 0
                assert e["version"] == 0 and e["model"]
    pair_eps = {d.payload["episode_id"] for d in bus.history("pairs")}
    assert all(ep.outcome != "judge_error" for ep in episodes if ep.episode_id in pair_eps)
    assert (run_dir / "summary.json").is_file()
    # Checkpoints: every episode's final state is in the SQLite checkpointer.
    assert (run_dir / "checkpoints.sqlite").stat().st_size > 0


class KilledAfterRespond(Scheduler):
    """An orchestrator that dies after each episode's `respond` node: its
    checkpoints are written and its tasks stay unacked on the bus."""

    killed = 0

    def budget_reached(self):  # type: ignore[no-untyped-def]
        return "killed" if self.killed >= 2 else None

    async def _one(self, episode_id):  # type: ignore[no-untyped-def]
        import time

        try:
            await self.graph.ainvoke(
                {"episode_id": episode_id, "started_at": time.time()},
                config={"configurable": {"thread_id": episode_id}},
                context=self.ctx,
                interrupt_after=["respond"],
            )
        finally:
            self.killed += 1
            self.sem.release()


def test_a_restarted_orchestrator_resumes_its_episodes_from_their_checkpoints(
    tiny_model_path: Path,
    engine: EngineConfig,
    seq_engine: EngineConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = tiny_config(
        tiny_model_path,
        engine,
        seq_engine,
        tmp_path,
        budget__episodes=2,
        loop__concurrency=2,
    )
    run_dir = tmp_path / "runs" / "r2"
    with monkeypatch.context() as m:
        m.setattr(orchestrator_loop, "Scheduler", KilledAfterRespond)
        asyncio.run(Loop(cfg, run_dir, progress=False).run())
    bus = make_bus(None, run_dir / "bus.sqlite")
    assert bus.length("episodes") == 0 and bus.pending("tasks", "orchestrators") == 2

    asyncio.run(Loop(cfg, run_dir, progress=False).run())  # the same run, the same consumer
    episodes = [Episode.model_validate(d.payload) for d in bus.history("episodes")]
    assert sorted(e.episode_id for e in episodes) == ["r2-ep00000", "r2-ep00001"]
    assert bus.pending("tasks", "orchestrators") == 0
    events = trace_events(run_dir)
    resumed = [e for e in events if e.get("event") == "episode.resumed"]
    assert sorted(e["episode_id"] for e in resumed) == ["r2-ep00000", "r2-ep00001"]
    # contrast is off here (it only passes on), but it is the next node
    assert all(e["next"] == ["contrast"] for e in resumed)
    for ep in episodes:
        nodes = [e["node"] for e in events if e.get("episode_id") == ep.episode_id and "node" in e]
        # attack and respond ran once, before the kill; the rest after the restart
        assert nodes[:3] == ["attack", "respond", "critique"] and nodes[-1] == "emit"
        assert nodes.count("attack") == 1 and nodes.count("respond") == 1
