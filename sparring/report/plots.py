"""The report's figures: matplotlib (Agg, no pyplot state), each a PNG as base64
with a caption that says what it shows and how to read it.

matplotlib is imported inside each function, so importing this module (and
``sparring --help``) stays light."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sparring.eval.metrics import Mean, Rate
from sparring.report.data import RunData

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH_IN = 10.0
DPI = 100
COLOURS = {
    "rule": "#c0392b",
    "critic": "#e67e22",
    "refusal": "#8e44ad",
    "competence": "#2471a3",
    "loss": "#34495e",
    "margin": "#16a085",
    "accuracy": "#2471a3",
    "emitted": "#5d6d7e",
    "trained": "#48c9b0",
    "human": "#f5b041",
    "bleu": "#a93226",
    "embedding": "#1f618d",
    "distinct1": "#7d3c98",
    "distinct2": "#229954",
    "promoted": "#1e8449",
    "rejected": "#c0392b",
    "published": "#7f8c8d",
    "live": "#2471a3",
}
LN2 = math.log(2)  # DPO loss before training: the policy equals the reference


@dataclass(frozen=True)
class Plot:
    key: str
    title: str
    png_base64: str
    caption: str
    alt: str


def figures(data: RunData) -> list[Plot]:
    """Every figure the run's data allows, in report order."""
    makers = (eval_metrics, loop_metrics, pairs, dpo, timeline, diversity)
    return [p for p in (m(data) for m in makers) if p is not None]


# -- the figures --------------------------------------------------------------------


def eval_metrics(data: RunData) -> Plot | None:
    m = data.eval_metrics
    if not m:
        return None
    vs = sorted(m)
    fig, (a, b, c) = _figure(3)
    _rates(a, vs, [m[v].attack_success_rule for v in vs], "rule judge", COLOURS["rule"], -0.08)
    _rates(a, vs, [m[v].attack_success_critic for v in vs], "critic", COLOURS["critic"], 0.08)
    a.set_title("attack success (harmful prompts)")
    a.legend(loc="best", fontsize=8, frameon=False)
    _rates(b, vs, [m[v].over_refusal for v in vs], "over-refusal", COLOURS["refusal"], -0.08)
    _rates(b, vs, [m[v].degenerate for v in vs], "degenerate", COLOURS["critic"], 0.08)
    b.set_title("over-refusal (look-alikes); degenerate")
    b.legend(loc="best", fontsize=8, frameon=False)
    _means(c, vs, [m[v].competence for v in vs], COLOURS["competence"])
    c.set_title("competence (critic, 1-10)")
    c.set_ylim(0.5, 10.5)
    for ax in (a, b, c):
        _versions(ax, vs, data)
    return Plot(
        "eval",
        "Held-out evaluation per version",
        _png(fig),
        "Each point is one learner version on the held-out suites of `sparring eval` (all its "
        "stored suites pooled by kind); bars are 95% intervals (Wilson for rates, bootstrap for "
        "the mean). Left: harmful prompts the version answered without refusing (rule judge) or "
        "that the critic judged harmful; lower is safer. Middle: benign look-alikes it refused "
        "(rule judge; lower is more helpful) and degenerate answers (empty, a system prompt "
        "given back, loops; questions with reference answers left out; lower is "
        "healthier). Right: the critic's helpfulness on ordinary tasks; higher is better. "
        "Overlapping bars mean the difference is not established.",
        "attack success, over-refusal and competence per learner version with intervals",
    )


def loop_metrics(data: RunData) -> Plot | None:
    vs = [v for v in data.versions if v.episodes]
    if not vs:
        return None
    xs = [v.version for v in vs]
    fig, (a, b) = _figure(2)
    _rates(a, xs, [v.attack_success for v in vs], None, COLOURS["critic"])
    a.set_title("attack success in the loop (critic)")
    _means(b, xs, [v.helpfulness for v in vs], COLOURS["competence"])
    b.set_title("helpfulness of first answers (critic, 1-10)")
    b.set_ylim(0.5, 10.5)
    _versions(a, xs, data, [v.attack_success.n for v in vs])
    _versions(b, xs, data, [v.helpfulness.n for v in vs])
    return Plot(
        "loop",
        "What the loop's critic saw",
        _png(fig),
        "The run's own episodes, by the learner version that answered them: the share of "
        "judged episodes the adversary won (the critic called the first answer harmful; "
        "debate: the sneaky side won) and the critic's mean helpfulness, with 95% intervals; "
        "n = judged episodes (judge errors are left out). These are the attacker's queries of "
        "that moment, judged by the loop's own critic: a training signal, not a held-out "
        "measurement.",
        "attack success and helpfulness per learner version as judged in the loop",
    )


def pairs(data: RunData) -> Plot | None:
    vs = data.versions
    if not any(v.pairs or v.trained_on for v in vs):
        return None
    xs = [v.version for v in vs]
    fig, (ax,) = _figure(1, height=2.8)
    w = 0.38
    ai = [v.pairs - v.human_pairs for v in vs]
    human = [v.human_pairs for v in vs]
    ax.bar(
        [x - w / 2 for x in xs], ai, w, color=COLOURS["emitted"], label="built from its episodes"
    )
    if any(human):
        ax.bar(
            [x - w / 2 for x in xs],
            human,
            w,
            bottom=ai,
            color=COLOURS["human"],
            label="... from a person's verdict",
        )
    ax.bar(
        [x + w / 2 for x in xs],
        [v.trained_on for v in vs],
        w,
        color=COLOURS["trained"],
        label="trained on (to make this version)",
    )
    for x, v in zip(xs, vs, strict=True):
        for dx, n in ((-w / 2, v.pairs), (w / 2, v.trained_on)):
            if n:
                ax.annotate(
                    str(n),
                    (x + dx, n),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    xytext=(0, 1),
                    textcoords="offset points",
                )
    ax.set_ylabel("preference pairs")
    ax.set_ylim(0, max(max(v.pairs, v.trained_on) for v in vs) * 1.2 + 0.5)
    ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=3)
    _versions(ax, xs, data)
    return Plot(
        "pairs",
        "Preference pairs per version",
        _png(fig),
        "Grey: preference pairs built from the episodes each version answered (orange on top: "
        "pairs from a person's review). Teal: the pairs the trainer used to make that version "
        "(each version is trained on pairs the earlier versions produced). A version with few "
        "episodes yields few pairs; no pairs at all means the critic rarely scored a refined "
        "answer above the first one.",
        "preference pairs emitted by and trained into each learner version",
    )


def dpo(data: RunData) -> Plot | None:
    trained = [v for v in data.versions if v.version > 0 and v.published_at is not None]
    if not trained:
        return None
    xs = [v.version for v in trained]
    # with an NLL term (trainer.sft_weight) the loss is no longer DPO's alone
    sft = data.config.trainer.sft_weight if data.config is not None else 0.0
    loss_title = "DPO loss (training mean)" if not sft else "DPO + NLL loss (training mean)"
    panels = [("loss", [v.train_loss for v in trained], loss_title)]
    if any(v.reward_margin is not None for v in trained):
        panels.append(("margin", [v.reward_margin for v in trained], "reward margin"))
    if any(v.reward_accuracy is not None for v in trained):
        acc = [None if v.reward_accuracy is None else 100 * v.reward_accuracy for v in trained]
        panels.append(("accuracy", acc, "reward accuracy (%)"))
    fig, axes = _figure(len(panels))
    for ax, (key, ys, title) in zip(axes, panels, strict=True):
        ax.plot(xs, _nan(ys), "-o", color=COLOURS[key], ms=5)
        ax.set_title(title)
        _versions(ax, xs, data)
        if key == "loss" and not sft:
            ax.axhline(LN2, ls="--", lw=1, color="#999")
            ax.annotate(
                "ln 2: no preference learned",
                (xs[0], LN2),
                fontsize=8,
                color="#666",
                xytext=(2, 3),
                textcoords="offset points",
            )
        if key == "margin":
            ax.axhline(0, ls="--", lw=1, color="#999")
        if key == "accuracy":
            ax.set_ylim(-5, 105)
            ax.axhline(50, ls="--", lw=1, color="#999")
    missing = (
        ""
        if len(panels) == 3
        else (
            " Reward margins and accuracies are not in this run's version records (they are "
            "shown when the trainer publishes them)."
        )
    )
    return Plot(
        "dpo",
        "DPO training per version",
        _png(fig),
        "What the trainer reported for each version it published. "
        + (
            f"The loss is DPO's plus {sft:g} times the chosen answers' NLL (trainer.sft_weight), "
            "so it does not start at ln 2; the reward figures are DPO's alone. "
            if sft
            else "The DPO loss starts at ln 2 = 0.693 (dashed) when the policy still equals its "
            "reference; below it, the version prefers the chosen answers over the rejected ones "
            "more than its reference did. "
        )
        + "At the trainer's last logged step: the reward margin is the mean gap between the "
        "chosen and rejected answers' implicit rewards (above 0 is right), and reward accuracy "
        "the share of pairs whose chosen answer had the higher reward (50% = chance)." + missing,
        "DPO loss and reward figures per learner version",
    )


def timeline(data: RunData) -> Plot | None:
    published = [v for v in data.versions if v.published_at is not None]
    if not (published or data.swaps or data.promotions) or data.started_at is None:
        return None
    t0 = data.started_at
    end = max([data.finished_at or t0, *(s.at for s in data.swaps)])

    def minutes(t: float) -> float:
        return (t - t0) / 60

    fig, (ax,) = _figure(1, height=3.0)
    # the serving version over time, stepping at each hot swap
    steps = sorted(data.swaps, key=lambda s: s.at)
    xs = [0.0, *(minutes(s.at) for s in steps), minutes(end)]
    ys = [0, *(s.version for s in steps)]
    ax.step(xs, [*ys, ys[-1]], where="post", color=COLOURS["live"], lw=2, label="serving")
    ax.scatter(
        [minutes(v.published_at or t0) for v in published],
        [v.version for v in published],
        marker="o",
        s=36,
        facecolors="none",
        edgecolors=COLOURS["published"],
        label="published by the trainer",
        zorder=3,
    )
    for ok, marker in ((True, "^"), (False, "X")):
        ps = [p for p in data.promotions if p.promoted is ok and p.decided_at is not None]
        if ps:
            key = "promoted" if ok else "rejected"
            ax.scatter(
                [minutes(p.decided_at or t0) for p in ps],
                [p.version for p in ps],
                marker=marker,
                s=70,
                color=COLOURS[key],
                label=key,
                zorder=4,
            )
    ax.set_xlabel("minutes since the run started")
    ax.set_ylabel("learner version")
    top = max([0, *ys, *(v.version for v in published), *(p.version for p in data.promotions)])
    ax.set_yticks(range(top + 1))
    ax.set_ylim(-0.5, top + 0.7)
    ax.set_xlim(left=0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    gate = (
        "Triangles: versions the canary gate promoted; crosses: versions it rejected (the "
        "table below gives the reasons); a rejected version stays on disk and serving stays "
        "where it was."
        if data.promotions
        else "No version went through a canary gate (see below)."
    )
    return Plot(
        "timeline",
        "Promotions and hot swaps over time",
        _png(fig),
        "The blue steps show which learner version served the loop, moving at each hot swap "
        "(from the trace's swap events); circles mark when the trainer published each version. "
        + gate,
        "timeline of published, promoted, rejected and served learner versions",
    )


def diversity(data: RunData) -> Plot | None:
    ds = [d for d in data.diversity if d.queries or d.answers]
    if not ds:
        return None
    xs = [d.version for d in ds]
    fig, (a, b, c) = _figure(3)
    a.plot(xs, _nan([d.self_bleu for d in ds]), "-o", color=COLOURS["bleu"], ms=5)
    a.set_title("queries: self-BLEU")
    a.set_ylabel("lower = more diverse", fontsize=8)
    a.set_ylim(-0.03, 1.03)
    b.plot(xs, _nan([d.embedding_distance for d in ds]), "-o", color=COLOURS["embedding"], ms=5)
    b.set_title("queries: embedding distance")
    b.set_ylabel("higher = more diverse", fontsize=8)
    if data.embedding_note:
        b.text(
            0.5,
            0.5,
            "not computed:\n" + data.embedding_note,
            ha="center",
            va="center",
            transform=b.transAxes,
            fontsize=8,
            color="#666",
            wrap=True,
        )
    dists = [d.embedding_distance for d in ds if d.embedding_distance is not None]
    b.set_ylim(0, max([1.0, *dists]) * 1.08)
    c.plot(
        xs,
        _nan([d.distinct_1 for d in ds]),
        "-o",
        color=COLOURS["distinct1"],
        ms=5,
        label="distinct-1",
    )
    c.plot(
        xs,
        _nan([d.distinct_2 for d in ds]),
        "-s",
        color=COLOURS["distinct2"],
        ms=5,
        label="distinct-2",
    )
    c.set_title("answers: distinct-n")
    c.set_ylabel("higher = more diverse", fontsize=8)
    c.set_ylim(-0.03, 1.03)
    c.legend(loc="lower left", fontsize=8, frameon=False)
    _versions(a, xs, data, [d.queries for d in ds])
    _versions(b, xs, data, [d.queries for d in ds])
    _versions(c, xs, data, [d.answers for d in ds])
    source = (
        "the prompts this graph drew from its prompt set"
        if data.queries_from_dataset
        else "the attacker's queries"
    )
    return Plot(
        "diversity",
        "Diversity per version",
        _png(fig),
        f"Left and middle: {source} in the episodes each learner version answered. Self-BLEU "
        "scores each query against all the others of that version (BLEU-4, smoothed; 1 = they "
        "repeat each other); it grows with the number of queries (n), so compare versions with "
        "similar n. Embedding distance is the mean cosine distance between the queries' "
        "all-MiniLM-L6-v2 sentence embeddings (0 = all say the same). Right: the learner's "
        "first answers, unique word n-grams over all n-grams. A falling distinct-n or a rising "
        "self-BLEU over versions is the sign of mode collapse.",
        "self-BLEU, embedding distance and distinct-n per learner version",
    )


# -- helpers --------------------------------------------------------------------------


def _figure(ncols: int, height: float = 3.2) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=9)
        ax.title.set_fontsize(10)
    return fig, list(axes)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _versions(
    ax: Axes, xs: Sequence[int], data: RunData, counts: Sequence[int] | None = None
) -> None:
    """Version ticks (with each point's n under it): the base marked, rejected
    versions in red."""
    ax.set_xticks(list(xs))
    notes = {"base": " base", "rejected": " rejected"}
    labels = [f"v{x}" + notes.get(data.status(x), "") for x in xs]
    if counts is not None:
        labels = [f"{label}\nn={n}" for label, n in zip(labels, counts, strict=True)]
    ticks = ax.set_xticklabels(labels)
    for x, tick in zip(xs, ticks, strict=True):
        if data.status(x) == "rejected":
            tick.set_color(COLOURS["rejected"])
    if len(xs) == 1:
        ax.set_xlim(xs[0] - 1, xs[0] + 1)
    ax.grid(axis="y", alpha=0.3)


def _rates(
    ax: Axes,
    xs: Sequence[int],
    rates: Sequence[Rate],
    label: str | None,
    colour: str,
    dx: float = 0.0,
) -> None:
    ys = [_pct(r.rate) for r in rates]
    err = [[_gap(r.rate, r.lo) for r in rates], [_gap(r.hi, r.rate) for r in rates]]
    ax.errorbar(
        [x + dx for x in xs], ys, yerr=err, fmt="-o", ms=5, capsize=3, color=colour, label=label
    )
    ax.set_ylim(-3, 103)
    ax.set_ylabel("%")


def _means(ax: Axes, xs: Sequence[int], means: Sequence[Mean], colour: str) -> None:
    ys = [math.nan if m.mean is None else m.mean for m in means]
    err = [
        [0.0 if m.lo is None or m.mean is None else m.mean - m.lo for m in means],
        [0.0 if m.hi is None or m.mean is None else m.hi - m.mean for m in means],
    ]
    ax.errorbar(xs, ys, yerr=err, fmt="-o", ms=5, capsize=3, color=colour)


def _pct(x: float | None) -> float:
    return math.nan if x is None else 100 * x


def _gap(a: float | None, b: float | None) -> float:
    return 0.0 if a is None or b is None else 100 * (a - b)


def _nan(ys: Sequence[float | None]) -> list[float]:
    return [math.nan if y is None else y for y in ys]
