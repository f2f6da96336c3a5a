"""Human in the loop: an unsure critic pauses its episode; the pause survives a
restart of the orchestrator process; `sparring review` resumes it, and the pair
built from the person's verdict is marked human and weighted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from click.testing import CliRunner

from sparring.bus import make_bus
from sparring.cli import main
from sparring.config import EngineConfig
from sparring.orchestrator import Loop
from sparring.review import waiting
from sparring.schemas import Episode, PreferencePair
from tests.helpers import tiny_config, trace_events

ROOT = Path(__file__).resolve().parent.parent


def test_a_paused_episode_survives_a_restart_and_resumes_from_review(
    tiny_model_path: Path,
    smollm2_path: Path,
    engine: EngineConfig,
    seq_engine: EngineConfig,
    tmp_path: Path,
) -> None:
    cfg = tiny_config(
        tiny_model_path,
        engine,
        seq_engine,
        tmp_path,
        critic_model=smollm2_path,
        budget__episodes=2,
        loop__concurrency=2,
        loop__review_below_confidence=11,  # every readable verdict waits for a person
    )
    # Every critique goes to the person (a readable verdict is below confidence
    # 11; an unreadable one is reviewed too), so every episode pauses twice and
    # the person's verdicts decide its pair. The learner (SmolLM2, sampled on
    # the engine that honours per-request sampling) writes a refinement that
    # differs from its first answer.
    roles = dict(cfg.roles)
    roles["critic"] = roles["critic"].model_copy(update={"engine": "seq", "temperature": 0.0})
    roles["learner"] = roles["learner"].model_copy(
        update={"model": "critic", "temperature": 1.0, "max_tokens": 24}
    )
    cfg = cfg.model_copy(update={"roles": roles})
    run_dir = tmp_path / "runs" / "hitl"
    asyncio.run(Loop(cfg, run_dir, progress=False).run())

    bus = make_bus(None, run_dir / "bus.sqlite")
    first = waiting(bus)
    assert first, "no episode paused"
    assert all(r.node == "critique" for r in first)
    paused_ids = {r.episode_id for r in first}
    emitted = {d.msg_id for d in bus.history("episodes")}
    assert not paused_ids & emitted  # paused, not finished
    assert bus.pending("tasks", "orchestrators") == len(paused_ids)  # nothing acked

    # Reviews of other orchestrators' episodes arrive first: more than one read's
    # worth, held (not acked, not lost), and they must not hide this run's own.
    for n in range(20):
        bus.publish(
            "reviews",
            f"elsewhere-{n}:critique",
            {
                "episode_id": f"elsewhere-{n}",
                "node": "critique",
                "harmful": False,
                "helpfulness": 5,
                "critique": "Someone else's episode.",
                "reviewer": "other",
            },
        )
    # The orchestrator process starts again on the same run and waits for reviews.
    config = tmp_path / "hitl.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sparring",
            "run",
            "--config",
            str(config),
            "--run-id",
            "hitl",
            "--no-progress",
            "--set",
            "loop.review_wait_s=240",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "SPARRING_CONSUMER": "local"},
    )
    runner = CliRunner()
    answered: set[str] = set()
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the restarted run did not finish"
            for r in waiting(bus):
                # The original answer: harmful in the person's view; the refinement: fine.
                first_critique = r.node == "critique"
                out = runner.invoke(
                    main,
                    [
                        "review",
                        str(run_dir),
                        "--episode",
                        r.episode_id,
                        "--harmful",
                        "yes" if first_critique else "no",
                        "--helpfulness",
                        "2" if first_critique else "8",
                        "--critique",
                        "It helps with something harmful."
                        if first_critique
                        else "A safe, useful answer.",
                        "--reviewer",
                        "tester",
                    ],
                )
                assert out.exit_code == 0 and "recorded" in out.output, out.output
                answered.add(f"{r.episode_id}:{r.node}")
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert proc.returncode == 0, output[-3000:]

    events = trace_events(run_dir)
    restarted = [e for e in events if e.get("event") == "episode.paused" and e["after_restart"]]
    assert {e["episode_id"] for e in restarted} == paused_ids
    episodes = {d.msg_id: Episode.model_validate(d.payload) for d in bus.history("episodes")}
    assert paused_ids <= set(episodes)
    for eid in paused_ids:
        ep = episodes[eid]
        assert ep.critique.critic.role == "human" and ep.critique.critic.model == "tester"
        assert ep.critique.verdict is not None and ep.critique.verdict.harmful
        assert f"{eid}:critique" in answered
        nodes = [e["node"] for e in events if e.get("episode_id") == eid and "node" in e]
        assert nodes.count("attack") == 1 and "review" in nodes and nodes[-1] == "emit"
    pairs = [PreferencePair.model_validate(d.payload) for d in bus.history("pairs")]
    human = [p for p in pairs if p.episode_id in paused_ids]
    assert human, "a harmful original and a harmless refinement make a pair"
    assert all(p.source == "human" and p.weight == 2.0 for p in human)
    assert bus.pending("tasks", "orchestrators") == 0
    assert waiting(bus) == []
    shown = runner.invoke(main, ["trace", str(run_dir), "--episode", sorted(paused_ids)[0]])
    assert "a person judges the answer — tester" in shown.output
