"""The end-of-run summary: one row per learner version, from the bus's records."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import mean
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from sparring.bus import Bus
from sparring.bus.streams import EPISODES, PAIRS, PROMOTIONS, VERSIONS
from sparring.schemas import ADVERSARY_WON, Episode


@dataclass
class VersionRow:
    version: int
    episodes: int
    judged: int
    judge_errors: int
    attack_successes: int
    attack_success_rate: float | None
    mean_helpfulness: float | None
    pairs_emitted: int
    pairs_trained_on: int
    train_loss: float | None
    served_s: float
    # debate: how often the judge picked the side arguing for the known answer
    judge_accuracy: float | None = None
    # decompose: mean part helpfulness minus the whole's, and how often harmless
    # parts made a harmful whole
    decompose_gap: float | None = None
    harmful_wholes_from_harmless_parts: int | None = None
    # the canary gate's decision (promoted / rejected) and why
    gate: str | None = None
    gate_reason: str | None = None


@dataclass(frozen=True)
class VersionGroup:
    """What one learner version did: the one grouping that the run summary and
    the report compute their per-version figures from. ``pairs``, ``published``
    and ``decision`` are bus payloads (a report reads runs of other sparring
    versions, so they are not validated here)."""

    version: int
    episodes: list[Episode]
    judged: list[Episode]  # attacks the critic judged (no judge error)
    wins: int  # of those, the adversary won (harmful answered, harmless refused)
    helpfulness: list[float]  # the critic's scores of the judged answers
    pairs: list[dict[str, Any]]  # pairs from this version's episodes
    published: dict[str, Any]  # its VersionPublished ({} for the base)
    decision: dict[str, Any] | None  # the canary gate's, if it was gated

    @property
    def judge_errors(self) -> int:
        return sum(e.outcome == "judge_error" for e in self.episodes)


def group_by_version(
    episodes: list[Episode],
    pairs: list[dict[str, Any]],
    published: list[dict[str, Any]],
    decisions: list[dict[str, Any]],
) -> list[VersionGroup]:
    """Episodes, pairs, the version record and the gate's decision of every
    version that served, was published or was decided (v0, the base, always).
    A pair counts for the learner version of its episode."""
    by_version = {int(p["version"]): p for p in published if "version" in p}
    decided = {int(d["version"]): d for d in decisions if "version" in d}
    episode_version = {e.episode_id: e.learner.version for e in episodes}
    pair_version: dict[int, list[dict[str, Any]]] = {}
    for p in pairs:
        v = episode_version.get(p.get("episode_id", ""))
        if v is None:
            v = int((p.get("rejected_by") or {}).get("version", 0))
        pair_version.setdefault(v, []).append(p)
    versions = {e.learner.version for e in episodes} | set(by_version) | set(decided) | {0}
    out = []
    for v in sorted(versions):
        eps = [e for e in episodes if e.learner.version == v]
        judged = [e for e in eps if e.outcome != "judge_error" and e.attack]
        out.append(
            VersionGroup(
                version=v,
                episodes=eps,
                judged=judged,
                wins=sum(e.outcome in ADVERSARY_WON for e in judged),
                helpfulness=[
                    float(e.critique.verdict.helpfulness)
                    for e in judged
                    if e.critique is not None and e.critique.verdict is not None
                ],
                pairs=pair_version.get(v, []),
                published=by_version.get(v, {}),
                decision=decided.get(v),
            )
        )
    return out


def summarise(bus: Bus, role: str = "learner") -> list[VersionRow]:
    def mine(stream: str) -> list[dict[str, Any]]:
        return [d.payload for d in bus.history(stream) if d.payload.get("role") == role]

    groups = group_by_version(
        EPISODES.records(bus),
        # a pair without a role was written before trainer.roles: the learner's
        [d.payload for d in bus.history(PAIRS.name) if d.payload.get("role", "learner") == role],
        mine(VERSIONS.name),
        mine(PROMOTIONS.name),
    )
    rows = []
    for g in groups:
        v, eps, judged, wins, helps = g.version, g.episodes, g.judged, g.wins, g.helpfulness
        decision = g.decision
        debates = [e.debate.winner == "helpful" for e in eps if e.debate and e.debate.winner]
        parts = [e.decomposition for e in eps if e.decomposition]
        gaps = [d.gap for d in parts if d.gap is not None]
        rows.append(
            VersionRow(
                version=v,
                episodes=len(eps),
                judged=len(judged),
                judge_errors=g.judge_errors,
                attack_successes=wins,
                attack_success_rate=wins / len(judged) if judged else None,
                mean_helpfulness=mean(helps) if helps else None,
                pairs_emitted=len(g.pairs),
                pairs_trained_on=len(g.published.get("pair_ids") or []),
                train_loss=g.published.get("train_loss"),
                served_s=(
                    max(e.finished_at for e in eps) - min(e.started_at for e in eps) if eps else 0.0
                ),
                judge_accuracy=mean(debates) if debates else None,
                decompose_gap=round(mean(gaps), 2) if gaps else None,
                harmful_wholes_from_harmless_parts=(
                    sum(bool(d.harmless_parts_harmful_whole) for d in parts) if parts else None
                ),
                gate=(
                    None
                    if decision is None
                    else ("promoted" if decision.get("promoted") else "rejected")
                ),
                gate_reason=None if decision is None else decision.get("reason"),
            )
        )
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def render_table(rows: list[VersionRow], console: Console | None = None) -> None:
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
        title="sparring run summary (per learner version)",
        caption="attack success and helpfulness (1-10) as the critic judged them "
        "(debate: the sneaky debater won); judge errors count in neither",
    )
    for col in (
        "learner",
        "epi-\nsodes",
        "judge\nerrors",
        "attack\nsuccess",
        "help-\nful",
        "pairs",
        "trained\non",
        "train\nloss",
        "served",
    ):
        table.add_column(col, justify="right")
    debate = any(r.judge_accuracy is not None for r in rows)
    decompose = any(r.decompose_gap is not None for r in rows)
    if debate:
        table.add_column("judge\ncorrect", justify="right")
    if decompose:
        table.add_column("part-whole\ngap", justify="right")
        table.add_column("harmless parts,\nharmful whole", justify="right")
    gated = any(r.gate for r in rows)
    if gated:
        table.add_column("pro-\nmoted", justify="right")
    for r in rows:
        extra = []
        if debate:
            extra.append(_pct(r.judge_accuracy))
        if decompose:
            extra.append("-" if r.decompose_gap is None else f"{r.decompose_gap:+.1f}")
            extra.append(str(r.harmful_wholes_from_harmless_parts or 0))
        if gated:
            extra.append({"promoted": "yes", "rejected": "NO"}.get(r.gate or "", "-"))
        table.add_row(
            f"v{r.version}",
            str(r.episodes),
            str(r.judge_errors),
            f"{_pct(r.attack_success_rate)} of {r.judged}",
            "-" if r.mean_helpfulness is None else f"{r.mean_helpfulness:.1f}",
            str(r.pairs_emitted),
            str(r.pairs_trained_on) if r.version else "(base)",
            "-" if r.train_loss is None else f"{r.train_loss:.3f}",
            f"{r.served_s:.0f}s",
            *extra,
        )
    console = console or Console()
    console.print(table)
    for r in rows:
        if r.gate == "rejected":
            console.print(
                f"v{r.version} rejected by the canary gate (kept on disk, never served): "
                f"{r.gate_reason}"
            )


def as_json(rows: list[VersionRow]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]
