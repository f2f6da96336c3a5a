"""The end-of-run summary: one row per version of each trained role (the
learner's, and with trainer.roles the attacker's too), from the bus's records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
    # the role whose lineage the row is of; its gate's figures (the attacker
    # gate's: success, self_bleu, embedding_distance, ...) and the version
    # record's stage (trainer.coevolution: round, against, final)
    role: str = "learner"
    gate_metrics: dict[str, float | None] | None = None
    stage: dict[str, Any] | None = None
    # pairs the trainer refused (never trained), by reason, and conformity
    # pairs it left waiting for a later version (trainer.balance_pairs)
    pairs_refused: dict[str, int] = field(default_factory=dict)
    pairs_held_back: int = 0


def served_version(e: Episode, role: str) -> int | None:
    """The version of ``role`` that served episode ``e`` (None: none did): the
    learner answers every episode, the attacker wrote the query of those with an
    attack record (not a replayed seed or a drawn look-alike), a planner split
    the task of a decomposition."""
    if role == "learner":
        return e.learner.version
    if role == "attacker":
        return e.attacker.version if e.attack_record is not None else None
    d = e.decomposition
    return d.planner.version if d is not None and d.planner.role == role else None


@dataclass(frozen=True)
class VersionGroup:
    """What one version of a role did: the one grouping that the run summary and
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
    role: str = "learner",
) -> list[VersionGroup]:
    """Episodes, pairs, the version record and the gate's decision of every
    version of ``role`` that served, was published or was decided (v0, the
    base, always); ``pairs``, ``published`` and ``decisions`` are the role's.
    A learner's pair counts for the learner version of its episode; another
    role's, for the version that wrote its chosen side."""
    by_version = {int(p["version"]): p for p in published if "version" in p}
    decided = {int(d["version"]): d for d in decisions if "version" in d}
    served = [(e, served_version(e, role)) for e in episodes]
    episode_version = {e.episode_id: v for e, v in served if v is not None}
    pair_version: dict[int, list[dict[str, Any]]] = {}
    for p in pairs:
        v = episode_version.get(p.get("episode_id", "")) if role == "learner" else None
        if v is None:
            # the learner's side (a written refusal, loop.written_refusals, is neither's)
            sides = ("rejected_by", "chosen_by") if role == "learner" else ("chosen_by",)
            refs = [p.get(s) or {} for s in sides]
            ref = next((r for r in refs if r.get("role") == role), refs[0])
            v = int(ref.get("version", 0))
        pair_version.setdefault(v, []).append(p)
    versions = set(episode_version.values()) | set(by_version) | set(decided) | {0}
    out = []
    for v in sorted(versions):
        eps = [e for e, ev in served if ev == v]
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

    decisions = mine(PROMOTIONS.name)
    groups = group_by_version(
        EPISODES.records(bus),
        # a pair without a role was written before trainer.roles: the learner's
        [d.payload for d in bus.history(PAIRS.name) if d.payload.get("role", "learner") == role],
        mine(VERSIONS.name),
        decisions,
        role,
    )
    # a version never decided on (the base) was measured as the one a candidate
    # was decided against: its figures are that decision's baseline
    measured = {
        int(d["against"]): d.get("baseline") for d in decisions if d.get("against") is not None
    }
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
                role=role,
                gate_metrics=measured.get(v) if decision is None else decision.get("metrics"),
                stage=g.published.get("stage"),
                pairs_refused=dict(g.published.get("refused") or {}),
                pairs_held_back=int(g.published.get("held_back") or 0),
            )
        )
    return rows


def summarise_all(bus: Bus, roles: list[str]) -> dict[str, list[VersionRow]]:
    """Every role's rows (the learner's whether trained or not), the learner first."""
    return {r: summarise(bus, r) for r in dict.fromkeys(["learner", *roles])}


def stage_text(stage: dict[str, Any] | None) -> str:
    """A version record's stage in words: "round 2 final vs learner v1 (alternate)"."""
    if not stage:
        return "-"
    against = ", ".join(f"{r} v{v}" for r, v in (stage.get("against") or {}).items())
    words = [
        "" if stage.get("round") is None else f"round {stage['round']}",
        "final" if stage.get("final") else "",
        f"vs {against}" if against else "",
        f"({stage['schedule']})" if stage.get("schedule") else "",
    ]
    return " ".join(w for w in words if w) or "-"


def stage_columns(
    stages: list[tuple[int, dict[str, Any] | None]],
) -> tuple[list[str], list[list[str]]]:
    """A lineage table's stage columns, narrow: the heads, then each (version,
    stage)'s cells. One "vs <role>" per role a version trained against (that
    role's serving version then); "round" only where a round is not its
    version's number (it is one version per round otherwise)."""
    against = [(v, (s or {}).get("against") or {}, (s or {}).get("round")) for v, s in stages]
    others = list(dict.fromkeys(r for _, a, _ in against for r in a))
    rounds = any(n not in (None, v) for v, _, n in against)
    heads = (["round"] if rounds else []) + [f"vs\n{o}" for o in others]
    cells = [
        (["-" if n is None else str(n)] if rounds else [])
        + [f"v{a[o]}" if o in a else "-" for o in others]
        for _, a, n in against
    ]
    return heads, cells


def finals(stages: list[tuple[int, dict[str, Any] | None]]) -> str:
    """The versions a run ended with ("v2"), for a caption ("" where none)."""
    return ", ".join(f"v{v}" for v, s in stages if s and s.get("final"))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def render_table(rows: list[VersionRow], console: Console | None = None) -> None:
    """One role's table (the role of its rows), then why its rejected versions were."""
    role = rows[0].role if rows else "learner"
    console = console or Console()
    console.print(_learner_table(rows) if role == "learner" else _role_table(role, rows))
    gate = "the canary gate" if role == "learner" else f"the {role} gate"
    name = "" if role == "learner" else f"{role} "
    for r in rows:
        if r.gate == "rejected":
            console.print(
                f"{name}v{r.version} rejected by {gate} (kept on disk, never served): "
                f"{r.gate_reason}"
            )
        if line := pairs_line(r):
            console.print(f"{name}v{r.version}: {line}", markup=False)


def pairs_line(r: VersionRow) -> str:
    """What the trainer did not train with a version, in words ("" where nothing)."""
    said = []
    if r.pairs_refused:
        n = sum(r.pairs_refused.values())
        why = "; ".join(f"{k}: {v}" for k, v in sorted(r.pairs_refused.items()))
        said.append(f"the trainer refused {n} pair{'s' * (n != 1)}, never trained ({why})")
    if r.pairs_held_back:
        n = r.pairs_held_back
        said.append(
            f"{n} conformity pair{'s' * (n != 1)} held back for a later version or run "
            "(trainer.balance_pairs)"
        )
    return "; ".join(said)


def _table(title: str, caption: str) -> Table:
    return Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
        title=title,
        caption=caption,
    )


def _learner_table(rows: list[VersionRow]) -> Table:
    table = _table(
        "sparring run summary (per learner version)",
        "attack success and helpfulness (1-10) as the critic judged them "
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
    return table


# the gate's figures a role's table shows (the attacker gate's gated ones;
# another role: every figure its decisions hold), and how each is written
GATE_FIGURES = {"attacker": ("success", "self_bleu", "embedding_distance")}
FIGURE_HEADS = {
    "success": "suc-\ncess",
    "self_bleu": "self-\nBLEU",
    "embedding_distance": "emb.\ndist.",
}
CAPTIONS = {
    "attacker": "episodes: queries the version wrote; pairs: pairs whose chosen query it wrote",
}
GATE_CAPTIONS = {
    "attacker": "; gate: on fixed probes against the frozen base learner, success, self-BLEU "
    "(lower: more diverse), embedding distance (higher: more diverse)",
}


def _role_table(role: str, rows: list[VersionRow]) -> Table:
    """A trained role other than the learner: what it served and was trained on,
    its gate's figures and its stage in the schedule (trainer.coevolution)."""
    names = GATE_FIGURES.get(role) or tuple(
        dict.fromkeys(k for r in rows for k in (r.gate_metrics or {}))
    )
    stages = [(r.version, r.stage) for r in rows]
    stage_heads, stage_cells = stage_columns(stages)
    final = finals(stages)
    gated = any(r.gate for r in rows)
    table = _table(
        f"sparring run summary (per {role} version)",
        CAPTIONS.get(role, f"episodes: those the {role} version served")
        + (GATE_CAPTIONS.get(role, "; its gate's figures") if gated else "")
        + ("; vs: the other role's version serving while it trained" if stage_heads else "")
        + (f"; {final}: the run's final version" if final else ""),
    )
    heads = [role, "epi-\nsodes", "pairs", "trained\non", "train\nloss"]
    heads += [FIGURE_HEADS.get(n, n.replace("_", "\n")) for n in names] if gated else []
    heads += stage_heads
    heads += ["pro-\nmoted"] if gated else []
    for col in heads:
        table.add_column(col, justify="right")
    for r, staged in zip(rows, stage_cells, strict=True):
        cells = [
            f"v{r.version}",
            str(r.episodes),
            str(r.pairs_emitted),
            str(r.pairs_trained_on) if r.version else "(base)",
            "-" if r.train_loss is None else f"{r.train_loss:.3f}",
        ]
        if gated:
            cells += [_figure(n, (r.gate_metrics or {}).get(n)) for n in names]
        cells += staged
        if gated:
            cells.append({"promoted": "yes", "rejected": "NO"}.get(r.gate or "", "-"))
        table.add_row(*cells)
    return table


def _figure(name: str, x: float | None) -> str:
    if x is None:
        return "-"
    return _pct(x) if name.endswith("success") else f"{x:.2f}"


def as_json(rows: list[VersionRow]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]
