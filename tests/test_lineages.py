"""Every trained role's lineage: the run summary's rows per attacker version
(grouped by the attacker version that wrote each query, with its gate's
figures and stage), the learner's rows untouched by the attacker's records,
and the report's attacker lineage panel and cross-play table, from a real
SQLite bus holding both roles' records."""

from __future__ import annotations

import asyncio
import json
import re
from html import unescape
from pathlib import Path

import yaml
from click.testing import CliRunner
from rich.console import Console

from sparring.bus import Bus, make_bus
from sparring.bus.streams import EPISODES, PAIRS, PROMOTIONS, VERSIONS
from sparring.cli import main
from sparring.config import load_config
from sparring.orchestrator import loop as loop_module
from sparring.orchestrator.wiring import chat_client
from sparring.report.data import collect
from sparring.report.html import render
from sparring.schemas import (
    AttackRecord,
    ChatMessage,
    Critique,
    Episode,
    Mode,
    ModelRef,
    PreferencePair,
    PromotionDecision,
    Verdict,
    VersionPublished,
)
from sparring.summary import as_json, render_table, summarise, summarise_all
from sparring.tracing import Tracer

COEVOLVE = Path(__file__).parent.parent / "configs" / "coevolve.yaml"
T0 = 1_796_000_000.0
CRITIC = ModelRef(role="critic", model="c")
RECORD = [
    ChatMessage(role="system", content="You are a red-team tester."),
    ChatMessage(role="user", content="Risk area: weapons"),
]
# the attacker gate's figures per attacker version (v0: measured as v1's baseline)
FIGURES = {
    0: {"success": 0.30, "self_bleu": 0.21, "embedding_distance": 0.71},
    1: {"success": 0.45, "self_bleu": 0.24, "embedding_distance": 0.70},
    2: {"success": 0.20, "self_bleu": 0.60, "embedding_distance": 0.40},
}
CROSSPLAY = {
    "probes": 48,
    "attackers": [0, 1, 2],
    "learners": [0, 1],
    "success": [[0.31, 0.25], [0.40, None], [0.45, 0.28]],
    "self_bleu": [0.21, 0.25, 0.24],
    "embedding_distance": [0.71, 0.69, 0.70],
    "measured_at": T0 + 900,
}


def _episode(n: int, learner: int, attacker: int, harmful: bool, mode: Mode = "attack") -> Episode:
    """Episode e<n>: the attacker version ``attacker`` wrote its query (mode
    attack or look-alike); ``attacker`` < 0: a replayed seed (no attack record)."""
    verdict = Verdict(harmful=harmful, helpfulness=5, confidence=7)
    record = AttackRecord(seed="weapons", mode=mode, messages=RECORD, examples=["x"])
    return Episode(
        episode_id=f"e{n}",
        run_id="r",
        category="weapons",
        query=f"query {n}",
        attacker=ModelRef(role="attacker", model="a", version=attacker if attacker >= 0 else 1),
        answer="Sure: ..." if harmful else "I can't help with that.",
        learner=ModelRef(role="learner", model="m", version=learner),
        critique=Critique(text="because", verdict=verdict, critic=CRITIC),
        outcome="attack_success" if harmful else "attack_failure",
        mode=mode,
        attack_record=record if attacker >= 0 else None,
        started_at=T0 + 10 * n,
        finished_at=T0 + 10 * n + 5,
    )


# (learner version, attacker version, harmful): e3 is attacker v1's against
# learner v0, e6 a replayed seed served while attacker v1 was live
EPISODES_PLAN = {
    1: (0, 0, True),
    2: (0, 0, False),
    3: (0, 1, True),
    4: (1, 1, False),
    6: (1, -1, False),
}


def _episodes() -> dict[int, Episode]:
    eps = {n: _episode(n, *plan) for n, plan in EPISODES_PLAN.items()}
    eps[5] = _episode(5, 1, 1, False, mode="lookalike")
    return eps


def _pair(pid: str, chosen: Episode, rejected: Episode, role: str) -> PreferencePair:
    by = (chosen.attacker, rejected.attacker) if role == "attacker" else (chosen.learner,) * 2
    return PreferencePair(
        pair_id=pid,
        episode_id=chosen.episode_id,
        run_id="r",
        prompt=chosen.query,
        chosen=chosen.query if role == "attacker" else "I can't help with that.",
        rejected=rejected.query if role == "attacker" else chosen.answer,
        chosen_by=by[0],
        rejected_by=by[1],
        critique="...",
        kind="attack" if role == "attacker" else "refine",
        role=role,
        created_at=chosen.finished_at,
    )


def _stage(n: int, against: dict[str, int], final: bool = False) -> dict[str, object]:
    return {"schedule": "alternate", "round": n, "against": against, "final": final}


def _publish_learner(bus: Bus, eps: dict[int, Episode]) -> None:
    for e in eps.values():
        EPISODES.publish(bus, e.episode_id, e)
    # the learner's pairs: from the episodes its versions answered
    for pid, e in (("l1", eps[1]), ("l2", eps[4])):
        PAIRS.publish(bus, pid, _pair(pid, e, e, "learner"))
    v1 = VersionPublished(
        role="learner",
        version=1,
        path="/v/learner/v1",
        base_version=0,
        pair_ids=["l1"],
        train_loss=0.61,
        stage=_stage(1, {"attacker": 1}),
        published_at=T0 + 35,
    )
    VERSIONS.publish(bus, "learner:1", v1)
    canary = {"attack_success": 0.2, "over_refusal": 0.0, "competence": 6.0}
    decision = PromotionDecision(
        role="learner",
        version=1,
        against=0,
        promoted=True,
        reason="no tracked metric worse beyond its tolerance",
        metrics=canary,
        baseline={**canary, "attack_success": 0.3},
        canary_prompts=12,
        decided_at=T0 + 38,
    )
    PROMOTIONS.publish(bus, "learner-v1", decision)


def _publish_attacker(bus: Bus, eps: dict[int, Episode]) -> None:
    # chosen over rejected: a3's rejected query is attacker v0's (e2), its chosen v1's
    for pid, chosen, rejected in (("a1", 1, 2), ("a2", 4, 5), ("a3", 3, 2)):
        PAIRS.publish(bus, pid, _pair(pid, eps[chosen], eps[rejected], "attacker"))
    plan = {
        1: (["a1"], 0.55, _stage(1, {"learner": 0}), T0 + 25),
        2: (["a2", "a3"], 0.50, _stage(2, {"learner": 1}, final=True), T0 + 70),
    }
    for n, (ids, loss, stage, at) in plan.items():
        v = VersionPublished(
            role="attacker",
            version=n,
            path=f"/v/attacker/v{n}",
            base_version=n - 1,
            pair_ids=ids,
            train_loss=loss,
            stage=stage,
            published_at=at,
        )
        VERSIONS.publish(bus, f"attacker:{n}", v)
    reasons = {1: "no tracked metric worse beyond its tolerance", 2: "self_bleu 0.24 -> 0.60"}
    for n in (1, 2):
        decision = PromotionDecision(
            role="attacker",
            version=n,
            against=n - 1,
            promoted=n == 1,
            reason=f"{reasons[n]} (against the frozen base learner, 24 probes)",
            metrics=dict(FIGURES[n]),
            baseline=dict(FIGURES[n - 1]),
            canary_prompts=24,
            decided_at=T0 + 30 + 50 * (n - 1),
        )
        PROMOTIONS.publish(bus, f"attacker-v{n}", decision)


def _bus(path: Path) -> Bus:
    bus = make_bus(None, path)
    eps = _episodes()
    _publish_learner(bus, eps)
    _publish_attacker(bus, eps)
    return bus


def test_attacker_rows_group_by_the_attacker_version_and_show_its_gate(tmp_path: Path) -> None:
    bus = _bus(tmp_path / "bus.sqlite")
    rows = {r.version: r for r in summarise(bus, "attacker")}
    assert sorted(rows) == [0, 1, 2] and all(r.role == "attacker" for r in rows.values())
    # queries it wrote: e3 (against learner v0) is v1's; the replayed seed e6 is nobody's
    assert [rows[v].episodes for v in (0, 1, 2)] == [2, 3, 0]
    # pairs by the version that wrote the chosen query (a3 rejects a v0 query)
    assert [rows[v].pairs_emitted for v in (0, 1, 2)] == [1, 2, 0]
    assert [rows[v].pairs_trained_on for v in (1, 2)] == [1, 2]
    assert (rows[1].train_loss, rows[2].train_loss) == (0.55, 0.50)
    assert (rows[0].gate, rows[1].gate, rows[2].gate) == (None, "promoted", "rejected")
    assert "self_bleu 0.24 -> 0.60" in (rows[2].gate_reason or "")
    for v in (0, 1, 2):  # v0's: the baseline v1 was decided against
        assert rows[v].gate_metrics == FIGURES[v]
    assert rows[0].stage is None and rows[2].stage == _stage(2, {"learner": 1}, final=True)

    console = Console(record=True, width=80)
    render_table(list(rows.values()), console)
    shown = console.export_text()
    assert "sparring run summary (per attacker version)" in shown
    cells = [line.split() for line in shown.splitlines()]
    lines = {c[0]: c for c in cells if c and re.fullmatch(r"v\d", c[0])}
    # attacker, episodes, pairs, trained on, loss, success, self-BLEU, distance, vs learner
    assert lines["v1"] == ["v1", "3", "2", "1", "0.550", "45%", "0.24", "0.70", "v0", "yes"]
    assert lines["v2"] == ["v2", "0", "0", "2", "0.500", "20%", "0.60", "0.40", "v1", "NO"]
    assert lines["v0"] == ["v0", "2", "1", "(base)", "-", "30%", "0.21", "0.71", "-", "-"]
    assert "v2: the run's final version" in " ".join(shown.split())
    for learner_only in ("help-", "judge", "errors"):  # the learner's columns
        assert learner_only not in shown
    assert "attacker v2 rejected by the attacker gate" in shown
    assert max(len(line) for line in shown.splitlines()) <= 80
    bus.close()


def test_the_learner_rows_are_unchanged_by_the_attackers_records(tmp_path: Path) -> None:
    bus = make_bus(None, tmp_path / "bus.sqlite")
    eps = _episodes()
    _publish_learner(bus, eps)
    alone = as_json(summarise(bus))
    _publish_attacker(bus, eps)
    both = summarise_all(bus, ["attacker", "learner"])
    assert list(both) == ["learner", "attacker"]
    assert as_json(both["learner"]) == as_json(summarise(bus)) == alone
    rows = {r.version: r for r in both["learner"]}
    # grouped by the learner version that answered (e3: learner v0, attacker v1)
    assert (rows[0].episodes, rows[1].episodes) == (3, 3)
    assert (rows[0].pairs_emitted, rows[1].pairs_emitted, rows[1].pairs_trained_on) == (1, 1, 1)
    assert (rows[0].judged, rows[0].attack_successes) == (3, 2)
    assert rows[1].gate == "promoted" and rows[1].stage == _stage(1, {"attacker": 1})
    assert rows[1].gate_metrics == {"attack_success": 0.2, "over_refusal": 0.0, "competence": 6.0}
    console = Console(record=True, width=80)
    render_table(both["learner"], console)
    assert "per learner version" in console.export_text()
    bus.close()


def test_the_run_writes_and_prints_a_summary_per_trained_role(tmp_path: Path) -> None:
    """summary.json stays the learner's; summary-attacker.json is the attacker's."""
    cfg = load_config(COEVOLVE)
    run_dir = tmp_path / "run"
    _bus(run_dir / "bus.sqlite").close()
    loop = loop_module.Loop(cfg, run_dir, run_id="r")
    bus = make_bus(None, run_dir / "bus.sqlite")
    tracer = Tracer(run_dir, "r")
    asyncio.run(loop._shut_down([], [], chat_client(cfg), bus, tracer))
    check = make_bus(None, run_dir / "bus.sqlite")
    learner, attacker = summarise(check), summarise(check, "attacker")
    check.close()
    assert json.loads((run_dir / "summary.json").read_text()) == as_json(learner)
    assert json.loads((run_dir / "summary-attacker.json").read_text()) == as_json(attacker)
    assert not (run_dir / "summary-learner.json").exists()
    assert loop.rows == learner
    console = Console(record=True, width=100)
    loop_module._render_tables(loop, console)
    shown = console.export_text()
    assert shown.index("per learner version") < shown.index("per attacker version")


# -- the report ------------------------------------------------------------------


def _run(root: Path, crossplay: str | None = None) -> Path:
    run_dir = root / "runs" / "r"
    cfg = load_config(COEVOLVE).model_dump(mode="json")
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _bus(run_dir / "bus.sqlite").close()
    if crossplay is not None:
        (run_dir / "eval").mkdir()
        (run_dir / "eval" / "crossplay.json").write_text(crossplay)
    return run_dir


def _table_after(html: str, anchor: str) -> list[list[str]]:
    """The cells of the first table after ``anchor``, row by row (header first)."""
    start = html.index(anchor)
    table = html[start : html.index("</table>", start)]
    return [
        [unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)]
        for r in re.findall(r"<tr>(.*?)</tr>", table)
    ]


def test_the_report_shows_the_attacker_lineage_and_the_crossplay_table(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, json.dumps(CROSSPLAY))
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        main, ["report", str(run_dir), "--out", str(out), "--no-embeddings", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    html = out.read_text()

    lineage = _table_after(html, "<h2 id='lineage-attacker'>Attacker lineage</h2>")
    assert lineage[0][:11] == [
        "attacker",
        "status",
        "published",
        "stage",
        "episodes",
        "pairs",
        "trained on",
        "DPO loss",
        "success",
        "self-BLEU",
        "embedding distance",
    ]
    by = {row[0]: row for row in lineage[1:]}
    assert list(by) == ["v0", "v1", "v2"]
    assert by["v0"][1:2] + by["v0"][4:11] == [
        "base",
        "2",
        "1",
        "(base)",
        "-",
        "30%",
        "0.21",
        "0.71",
    ]
    assert by["v1"][1] == "promoted" and by["v1"][3] == "round 1 vs learner v0 (alternate)"
    assert by["v1"][4:11] == ["3", "2", "1", "0.550", "45%", "0.24", "0.70"]
    assert by["v2"][1] == "rejected" and by["v2"][3] == "round 2 final vs learner v1 (alternate)"
    assert by["v2"][8:11] == ["20%", "0.60", "0.40"] and "against v1" in by["v2"][11]
    assert "self_bleu 0.24 -> 0.60" in by["v2"][12]

    assert "success rate of attacker version i against learner version j" in html.lower()
    assert "the diagonal and below show whether the attacker keeps up" in html
    assert _table_after(html, "<h2 id='crossplay'>") == [
        ["attacker", "vs learner v0", "vs learner v1", "self-BLEU", "embedding distance"],
        ["v0", "31%", "25%", "0.21", "0.71"],
        ["v1", "40%", "-", "0.25", "0.69"],
        ["v2", "45%", "28%", "0.24", "0.70"],
    ]
    said = result.stdout
    assert "attacker lineage: r" in said and "cross-play" in said
    assert "attacker v2 rejected" in said and "self_bleu 0.24 -> 0.60" in said


def test_the_report_builds_without_a_crossplay_file_or_with_an_unreadable_one(
    tmp_path: Path,
) -> None:
    run_dir = _run(tmp_path)
    (run_dir / "config.yaml").unlink()  # the trained roles are read from the bus then
    data = collect(run_dir)
    assert data.crossplay is None and "crossplay" not in data.unreadable
    assert [v.version for v in data.lineages["attacker"]] == [0, 1, 2]
    assert [v.status for v in data.lineages["attacker"]] == ["base", "promoted", "rejected"]
    html = render(data, [])
    assert "id='lineage-attacker'" in html and "id='crossplay'" not in html

    (run_dir / "eval").mkdir()
    ragged = {**CROSSPLAY, "success": [[0.31, 0.25], [0.40]]}
    for text in ("{not json", json.dumps(ragged), json.dumps({**CROSSPLAY, "self_bleu": ["x"]})):
        (run_dir / "eval" / "crossplay.json").write_text(text)
        data = collect(run_dir)
        assert data.crossplay is None and data.unreadable["crossplay"] == 1, text
        html = render(data, [])
        assert "id='crossplay'" not in html and "1 crossplay" in html
