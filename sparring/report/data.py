"""What a report shows, read from a run directory: the bus's records, the trace's
swaps, ``sparring eval``'s stored results and the diversity of each version.

Records that newer producers add are read from the payload dicts and are
optional: ``promotions`` (gated promotion decisions) and the DPO reward figures
of ``versions`` (``reward_margin``, ``reward_accuracy``). A run without them
still gets a report, which says what it lacks.

With several trained roles (``trainer.roles``) each other role's lineage is
read too (its versions, gate decisions and stages), and a cross-play table from
``eval/crossplay.json`` where a benchmark wrote one: each attacker version's
success against each learner version on the same fixed probes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sparring.bus import ARCHIVE_DIR, Bus, make_bus
from sparring.bus.streams import EPISODES, PAIRS, PROMOTIONS, VERSIONS
from sparring.config import ConfigError, RunConfig, load_config
from sparring.eval.diversity import Embedder, VersionDiversity, version_diversity
from sparring.eval.metrics import Mean, Metrics, Rate, bootstrap_mean, wilson
from sparring.eval.report import by_version
from sparring.eval.runner import EVAL_DIR, SuiteResult, load_result
from sparring.schemas import Episode
from sparring.summary import group_by_version
from sparring.trace_view import read_events
from sparring.tracing import TRACE_FILE

ROLE = "learner"
CROSSPLAY_FILE = "crossplay.json"  # under eval/


class ReportError(RuntimeError):
    """A run that cannot be reported on; the message says what to give instead."""


@dataclass(frozen=True)
class VersionStats:
    """One learner version as the loop saw it (episodes it served, pairs they
    gave) and as the trainer made it (``published`` is None for the base)."""

    version: int
    episodes: int
    judge_errors: int
    attack_success: Rate  # the critic's verdicts: adversary won, of the judged attacks
    helpfulness: Mean  # the critic's 1-10 on the first answer to an attack
    pairs: int  # preference pairs built from this version's episodes
    human_pairs: int
    pairs_by_kind: dict[str, int]
    trained_on: int  # pairs this version was trained on (0: the base)
    replayed: int  # earlier versions' pairs it was trained on again
    train_loss: float | None
    train_seconds: float | None
    reward_margin: float | None
    reward_accuracy: float | None
    published_at: float | None


@dataclass(frozen=True)
class Promotion:
    """A gate's decision on a new version (stream ``promotions``)."""

    version: int
    against: int | None
    promoted: bool
    reason: str
    metrics: dict[str, float | None]
    baseline: dict[str, float | None]  # what the candidate was compared with
    canary_prompts: int | None
    decided_at: float | None


@dataclass(frozen=True)
class LineageVersion:
    """One version of a trained role other than the learner: the episodes it
    served (the attacker: whose query it wrote), the pairs whose chosen side it
    wrote, what it was trained on, its gate's decision and its stage in the
    schedule (``trainer.coevolution``; None: one trained role)."""

    version: int
    status: str  # base, promoted, rejected, pending (gated, undecided) or published
    episodes: int
    pairs: int
    trained_on: int
    train_loss: float | None
    published_at: float | None
    stage: dict[str, Any] | None
    promotion: Promotion | None
    # the gate's figures of this version: its decision's, or (never decided on,
    # e.g. the base) the baseline a candidate was decided against
    figures: dict[str, float | None]


@dataclass(frozen=True)
class CrossPlay:
    """``eval/crossplay.json``: ``success[i][j]`` is attacker ``attackers[i]``'s
    success rate against learner ``learners[j]`` on the same fixed probes (None:
    no readable figure); self-BLEU and embedding distance per attacker version."""

    probes: int | None
    attackers: list[int]
    learners: list[int]
    success: list[list[float | None]]
    self_bleu: list[float | None]
    embedding_distance: list[float | None]
    measured_at: float | None


@dataclass(frozen=True)
class Swap:
    """A hot swap the trace recorded (``swap.flipped``)."""

    version: int
    previous: int | None
    at: float
    warm_s: float | None


@dataclass
class RunData:
    run_id: str
    run_dir: Path
    config: RunConfig | None
    config_error: str | None
    started_at: float | None
    finished_at: float | None
    versions: list[VersionStats]
    promotions: list[Promotion]
    swaps: list[Swap]
    eval_results: list[SuiteResult]
    eval_metrics: dict[int, Metrics]
    diversity: list[VersionDiversity]
    queries_from_dataset: bool  # graphs without an attacker draw queries from a prompt set
    embedding_note: str | None  # why embedding distances are missing (None: computed)
    unreadable: Counter[str] = field(default_factory=Counter)  # stream -> records skipped
    # trained roles other than the learner, each its versions in order
    lineages: dict[str, list[LineageVersion]] = field(default_factory=dict)
    crossplay: CrossPlay | None = None

    @property
    def episodes(self) -> int:
        return sum(v.episodes for v in self.versions)

    @property
    def pairs(self) -> int:
        return sum(v.pairs for v in self.versions)

    def status(self, version: int) -> str:
        """base, promoted, rejected, live (swapped in, no gate), published, or
        pending (a gate exists but has not decided)."""
        if version == 0:
            return "base"
        decided = [p for p in self.promotions if p.version == version]
        if decided:
            return "promoted" if decided[-1].promoted else "rejected"
        if any(s.version == version for s in self.swaps):
            return "live"
        return "pending" if self.promotions else "published"


def resolve_run(target: str, runs_dir: Path) -> Path:
    for candidate in (Path(target), runs_dir / target):
        if any((candidate / f).is_file() for f in ("bus.sqlite", "config.yaml", TRACE_FILE)):
            return candidate
    raise ReportError(
        f"no run at '{target}': give a run directory (with the bus.sqlite, config.yaml "
        f"and trace.jsonl a run writes) or a run id under {runs_dir}/"
    )


def collect(
    run_dir: Path,
    embed: Embedder | None = None,
    embedding_note: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> RunData:
    """Everything the report shows. ``embed`` None leaves embedding distances
    out (``embedding_note`` says why); ``progress(what, done, total)`` is
    called before each version's diversity is computed, and once at the end."""
    config, config_error = _config(run_dir)
    streams = (EPISODES.name, PAIRS.name, VERSIONS.name, PROMOTIONS.name)
    with _open_bus(run_dir, config) as bus:
        records = {s: [d.payload for d in bus.history(s)] for s in streams}
    # the learner's (trainer.roles: other roles' records are in the streams too)
    pairs, published, decisions = ([p for p in records[s] if _is_learner(p)] for s in streams[1:])
    unreadable: Counter[str] = Counter()
    episodes = []
    for payload in records[EPISODES.name]:
        try:
            episodes.append(Episode.model_validate(payload))
        except ValidationError:
            unreadable["episodes"] += 1
    parsed = [(d, _promotion(d)) for d in decisions]
    promotions = [p for _, p in parsed if p is not None]
    unreadable["promotions"] = len(decisions) - len(promotions)
    events = _trace_events(run_dir / TRACE_FILE)
    swaps = [s for s in map(_swap, events) if s is not None]
    results = _eval_results(run_dir)
    # versions decided on count (a rejected one may have served nothing)
    readable = [d for d, p in parsed if p is not None]
    stats = _version_stats(episodes, pairs, published, readable)
    lineages = {
        r: _lineage(r, episodes, records, unreadable) for r in _other_roles(config, records)
    }
    crossplay = _crossplay(run_dir / EVAL_DIR / CROSSPLAY_FILE, unreadable)
    diversity = []
    from_dataset = bool(episodes) and all(e.attacker.role == "dataset" for e in episodes)
    for i, v in enumerate(stats):
        if progress:
            progress(f"diversity v{v.version}", i, len(stats))
        eps = [e for e in episodes if e.learner.version == v.version]
        # the attacker's diversity is that of what it wrote: benign draws and
        # replayed seeds come from a fixed set (graphs without an attacker: all do)
        qs = [e.query for e in eps if from_dataset or e.attacker.role != "dataset"]
        ans = [e.answer for e in eps]
        diversity.append(version_diversity(v.version, qs, ans, embed))
    if progress:
        progress("diversity", len(stats), len(stats))
    times = [t for t in (_ts(e) for e in events) if t is not None]
    starts = [e.started_at for e in episodes] + times
    ends = [e.finished_at for e in episodes] + times
    return RunData(
        run_id=run_dir.resolve().name,
        run_dir=run_dir,
        config=config,
        config_error=config_error,
        started_at=min(starts, default=None),
        finished_at=max(ends, default=None),
        versions=stats,
        promotions=promotions,
        swaps=swaps,
        eval_results=results,
        eval_metrics=by_version(results),
        diversity=diversity,
        queries_from_dataset=from_dataset,
        embedding_note=None if embed else embedding_note or "no embedding model was given",
        unreadable=+unreadable,
        lineages=lineages,
        crossplay=crossplay,
    )


# -- sources ----------------------------------------------------------------------


def _config(run_dir: Path) -> tuple[RunConfig | None, str | None]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None, f"{path} is missing"
    try:
        return load_config(path), None
    except ConfigError as err:
        return None, str(err)


class _open_bus:
    """The run's bus (its Redis when the config names one, else its SQLite file),
    or an empty one where the run has none; never creates a file."""

    def __init__(self, run_dir: Path, cfg: RunConfig | None) -> None:
        self.bus: Bus | None = None
        if cfg is not None and cfg.bus.redis_url:
            self.bus = make_bus(
                cfg.bus.redis_url,
                run_dir / "bus.sqlite",
                namespace=run_dir.name,
                archive_dir=run_dir / ARCHIVE_DIR,
            )
            return
        path = (cfg.bus.sqlite_path if cfg else None) or run_dir / "bus.sqlite"
        if Path(path).is_file():
            self.bus = make_bus(None, path)

    def __enter__(self) -> _Reader:
        return _Reader(self.bus)

    def __exit__(self, *exc: object) -> None:
        if self.bus is not None:
            self.bus.close()


@dataclass
class _Reader:
    bus: Bus | None

    def history(self, stream: str) -> list[Any]:
        return self.bus.history(stream) if self.bus is not None else []


def _is_learner(payload: dict[str, Any]) -> bool:
    return payload.get("role", ROLE) == ROLE


def _trace_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return list(read_events(f))


def _ts(event: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


def _swap(event: dict[str, Any]) -> Swap | None:
    at = _ts(event)
    if event.get("event") != "swap.flipped" or event.get("role") != ROLE or at is None:
        return None
    prev = event.get("previous_version")
    return Swap(
        int(event["version"]), None if prev is None else int(prev), at, _float(event.get("warm_s"))
    )


def _promotion(p: dict[str, Any]) -> Promotion | None:
    try:
        against = p.get("against")
        return Promotion(
            version=int(p["version"]),
            against=None if against is None else int(against),
            promoted=bool(p["promoted"]),
            reason=str(p.get("reason") or ""),
            metrics=_floats(p.get("metrics")),
            baseline=_floats(p.get("reference") or p.get("baseline")),
            canary_prompts=None if p.get("canary_prompts") is None else int(p["canary_prompts"]),
            decided_at=_float(p.get("decided_at")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _eval_results(run_dir: Path) -> list[SuiteResult]:
    found = (load_result(p) for p in sorted((run_dir / EVAL_DIR).glob("*/v*.json")))
    # The served condition only: results under another system prompt are stored
    # beside them (vN-template.json) and would otherwise pool with them.
    served = (r for r in found if r is not None and r.setup.system_prompt == "served")
    return sorted(served, key=lambda r: (r.version, r.suite))


def _version_stats(
    episodes: list[Episode],
    pairs: list[dict[str, Any]],
    published: list[dict[str, Any]],
    decisions: list[dict[str, Any]],
) -> list[VersionStats]:
    out = []
    for g in group_by_version(episodes, pairs, published, decisions):
        pub = g.published
        out.append(
            VersionStats(
                version=g.version,
                episodes=len(g.episodes),
                judge_errors=g.judge_errors,
                attack_success=wilson(g.wins, len(g.judged)),
                helpfulness=bootstrap_mean(g.helpfulness),
                pairs=len(g.pairs),
                human_pairs=sum(p.get("source") == "human" for p in g.pairs),
                pairs_by_kind=dict(Counter(str(p.get("kind", "refine")) for p in g.pairs)),
                trained_on=len(pub.get("pair_ids") or []),
                replayed=len(pub.get("replay_ids") or []),
                train_loss=_float(pub.get("train_loss")),
                train_seconds=_float(pub.get("train_seconds")),
                reward_margin=_float(pub.get("reward_margin")),
                reward_accuracy=_float(pub.get("reward_accuracy")),
                published_at=_float(pub.get("published_at")),
            )
        )
    return out


def _other_roles(config: RunConfig | None, records: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Trained roles other than the learner: the config's, and any with versions
    or decisions on the bus (a run whose config cannot be read)."""
    named = list(config.trainer.roles) if config is not None else []
    seen = [
        str(p["role"])
        for s in (VERSIONS.name, PROMOTIONS.name)
        for p in records[s]
        if p.get("role")
    ]
    return [r for r in dict.fromkeys([*named, *seen]) if r != ROLE]


def _lineage(
    role: str,
    episodes: list[Episode],
    records: dict[str, list[dict[str, Any]]],
    unreadable: Counter[str],
) -> list[LineageVersion]:
    def mine(stream: str) -> list[dict[str, Any]]:
        return [p for p in records[stream] if p.get("role") == role]

    parsed = [(d, _promotion(d)) for d in mine(PROMOTIONS.name)]
    unreadable["promotions"] += sum(p is None for _, p in parsed)
    decided = {p.version: p for _, p in parsed if p is not None}
    measured = {p.against: p.baseline for p in decided.values() if p.against is not None}
    readable = [d for d, p in parsed if p is not None]
    out = []
    for g in group_by_version(episodes, mine(PAIRS.name), mine(VERSIONS.name), readable, role):
        pub, decision = g.published, decided.get(g.version)
        stage = pub.get("stage")
        if g.version == 0:
            status = "base"
        elif decision is not None:
            status = "promoted" if decision.promoted else "rejected"
        else:
            status = "pending" if decided else "published"
        out.append(
            LineageVersion(
                version=g.version,
                status=status,
                episodes=len(g.episodes),
                pairs=len(g.pairs),
                trained_on=len(pub.get("pair_ids") or []),
                train_loss=_float(pub.get("train_loss")),
                published_at=_float(pub.get("published_at")),
                stage=stage if isinstance(stage, dict) else None,
                promotion=decision,
                figures=decision.metrics if decision else measured.get(g.version, {}),
            )
        )
    return out


def _crossplay(path: Path, unreadable: Counter[str]) -> CrossPlay | None:
    """The cross-play table where a benchmark wrote one (None: absent, or
    unreadable and counted so)."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        attackers = [int(a) for a in d["attackers"]]
        learners = [int(v) for v in d["learners"]]
        success = [[_cell(x) for x in row] for row in d["success"]]
        if len(success) != len(attackers) or any(len(r) != len(learners) for r in success):
            raise ValueError("success is not one row per attacker, one cell per learner")

        def per_attacker(key: str) -> list[float | None]:
            xs = [_cell(x) for x in d.get(key) or [None] * len(attackers)]
            if len(xs) != len(attackers):
                raise ValueError(f"{key} is not one figure per attacker")
            return xs

        return CrossPlay(
            probes=None if d.get("probes") is None else int(d["probes"]),
            attackers=attackers,
            learners=learners,
            success=success,
            self_bleu=per_attacker("self_bleu"),
            embedding_distance=per_attacker("embedding_distance"),
            measured_at=_float(d.get("measured_at")),
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        unreadable["crossplay"] += 1
        return None


def _cell(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(f"not a figure: {x!r}")
    return float(x)


def _float(x: Any) -> float | None:
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


def _floats(d: Any) -> dict[str, float | None]:
    return {str(k): _float(v) for k, v in d.items()} if isinstance(d, dict) else {}
