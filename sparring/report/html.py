"""The report as one self-contained HTML file: inline CSS, PNGs as data URIs, and
one inline script that marks the page once every image has decoded (a browser
test reads that mark)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape

from sparring.eval.metrics import Difference, Mean, Rate
from sparring.eval.report import points
from sparring.report.data import CrossPlay, LineageVersion, RunData
from sparring.report.plots import Plot
from sparring.summary import GATE_FIGURES, stage_text

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1040px; margin: 0 auto; padding: 24px 28px 64px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 8px; padding-top: 8px; border-top: 1px solid #e3e3e3; }
.sub { color: #666; margin: 0 0 16px; }
figure { margin: 8px 0 12px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: #444; font-size: 13.5px; margin-top: 4px; }
table { border-collapse: collapse; font-size: 13.5px; margin: 8px 0 4px; }
th, td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #eee; }
th { background: #f6f6f6; font-weight: 600; }
td.l, th.l { text-align: left; }
table.kv td:first-child { color: #555; text-align: left; }
table.kv td { text-align: left; }
.note { background: #fff8e5; border-left: 4px solid #f0b429; padding: 8px 12px; margin: 10px 0; }
.promoted { color: #1e8449; font-weight: 600; } .rejected { color: #c0392b; font-weight: 600; }
code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
footer { margin-top: 40px; color: #777; font-size: 12.5px; }
"""

# Marks <body> once every <img> has decoded: data-images="all-decoded" or "broken".
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images-decoded", ok.length + "/" + imgs.length);
  document.body.setAttribute("data-images", ok.length === imgs.length ? "all-decoded" : "broken");
});
"""


def render(data: RunData, plots: Sequence[Plot], generated_at: float | None = None) -> str:
    by_key = {p.key: p for p in plots}
    parts = [
        _header(data, generated_at or time.time()),
        _eval_section(data, by_key.get("eval")),
        _section(
            "What the loop's critic saw",
            by_key.get("loop"),
            _loop_table(data),
            None if by_key.get("loop") else "No episodes on this run's bus yet.",
        ),
        _training_section(data, by_key.get("pairs"), by_key.get("dpo")),
        _timeline_section(data, by_key.get("timeline")),
        *(_lineage_section(data, role, vs) for role, vs in data.lineages.items()),
        _crossplay_section(data.crossplay),
        _section(
            "Diversity",
            by_key.get("diversity"),
            _diversity_table(data),
            None if by_key.get("diversity") else "No episodes to measure.",
        ),
        _footer(data),
    ]
    title = f"sparring report: {escape(data.run_id)}"
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>\n<title>{title}"
        f"</title>\n<style>{STYLE}</style>\n<script>{SCRIPT}</script>\n</head>\n<body>\n"
        + "\n".join(p for p in parts if p)
        + "\n</body>\n</html>\n"
    )


# -- sections -----------------------------------------------------------------------


def _header(data: RunData, generated_at: float) -> str:
    span = "-"
    if data.started_at is not None and data.finished_at is not None:
        span = (
            f"{_when(data.started_at)} to {_when(data.finished_at, date=False)} "
            f"({(data.finished_at - data.started_at) / 60:.1f} min)"
        )
    rows = [("run", f"<code>{escape(str(data.run_dir))}</code>"), ("ran", escape(span))]
    cfg = data.config
    if cfg is not None:
        roles = "; ".join(
            f"{escape(r)}: {escape(rc.model)} on engine {escape(rc.engine)}"
            + ("" if rc.version == "base" else f" (version {escape(str(rc.version))})")
            for r, rc in cfg.roles.items()
        )
        budget = ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in cfg.budget.model_dump().items() if v
        )
        t = cfg.trainer
        critics = ", ".join(cfg.loop.critics)
        rows += [
            ("graph", escape(f"{cfg.loop.graph} (critics: {critics})")),
            ("roles", roles),
            ("budget", escape(budget or "none")),
            (
                "trainer",
                escape(
                    f"{t.objective}, LoRA r={t.lora_r}, "
                    + (
                        "one round (every pair in the final version)"
                        if t.pairs_per_version is None
                        else f"{t.pairs_per_version} pairs per version"
                    )
                    + f", lineage {t.lineage}, lr {t.learning_rate:g}, beta {t.beta:g}, "
                    f"{t.epochs} epoch(s)"
                ),
            ),
        ]
    else:
        rows.append(("config", escape(data.config_error or "unreadable")))
    trained = sum(1 for v in data.versions if v.version > 0)
    rows.append(
        (
            "records",
            f"{data.episodes} episodes, {data.pairs} preference pairs, "
            f"{trained} trained version(s)",
        )
    )
    if data.unreadable:
        skipped = ", ".join(f"{n} {s}" for s, n in data.unreadable.items())
        rows.append(("unreadable", escape(f"{skipped} record(s) left out (another schema)")))
    return (
        f"<h1>sparring report: {escape(data.run_id)}</h1>\n"
        f"<p class='sub'>generated {escape(_when(generated_at))}</p>\n" + _kv(rows)
    )


def _eval_section(data: RunData, plot: Plot | None) -> str:
    if plot is None:
        return (
            "<h2>Held-out evaluation</h2>\n<p class='note'>No evaluation results are stored "
            f"with this run: run <code>sparring eval {escape(data.run_id)}</code> first to "
            "measure each version on held-out suites (attack success, over-refusal and "
            "competence, with intervals), then run <code>sparring report</code> again. "
            "Until then, the loop's own figures below are the only measure.</p>"
        )
    suites = sorted({r.suite for r in data.eval_results})
    head = [
        "learner",
        "attack success (rule)",
        "attack success (critic)",
        "over-refusal",
        "discrimination",
        "competence",
        "tasks refused",
        "accuracy",
        "degenerate",
        "judge errors",
    ]
    rows = [
        [
            _label(data, v),
            _rate(m.attack_success_rule),
            _rate(m.attack_success_critic),
            _rate(m.over_refusal),
            _diff(m.discrimination),
            _mean(m.competence),
            _rate(m.tasks_refused),
            _rate(m.accuracy),
            _rate(m.degenerate),
            f"{m.judge_errors} of {m.items if m.judged is None else m.judged}",
        ]
        for v, m in sorted(data.eval_metrics.items())
    ]
    note = f"<p class='sub'>suites: {escape(', '.join(suites))}</p>"
    return _section("Held-out evaluation", plot, note + _table(head, rows), None)


def _loop_table(data: RunData) -> str:
    head = ["learner", "status", "episodes", "judge errors", "attack success", "helpfulness"]
    rows = [
        [
            f"v{v.version}",
            _status(data, v.version),
            str(v.episodes),
            str(v.judge_errors),
            _rate(v.attack_success),
            _mean(v.helpfulness),
        ]
        for v in data.versions
    ]
    return _table(head, rows, raw_cols={1}, left_cols={1})


def _training_section(data: RunData, pairs: Plot | None, dpo: Plot | None) -> str:
    figures = [_figure(p) for p in (pairs, dpo) if p is not None]
    if dpo is None:
        figures.append("<p class='note'>The trainer has published no version yet.</p>")
    return "\n".join(["<h2>Training</h2>", *figures, _training_table(data)])


def _training_table(data: RunData) -> str:
    head = [
        "learner",
        "pairs from its episodes",
        "trained on",
        "DPO loss",
        "reward margin",
        "reward accuracy",
        "training time",
    ]
    rows = [
        [
            _label(data, v.version),
            str(v.pairs),
            "(base)"
            if v.version == 0
            else str(v.trained_on) + (f" + {v.replayed} replayed" if v.replayed else ""),
            _num(v.train_loss, "{:.3f}"),
            _num(v.reward_margin, "{:+.3f}"),
            _num(v.reward_accuracy and 100 * v.reward_accuracy, "{:.0f}%"),
            _num(v.train_seconds, "{:.0f} s"),
        ]
        for v in data.versions
    ]
    return _table(head, rows)


def _timeline_section(data: RunData, plot: Plot | None) -> str:
    if data.promotions:
        head = [
            "learner",
            "decision",
            "against",
            "canary prompts",
            "reason",
            "metrics (compared with)",
            "decided",
        ]
        rows = [
            [
                f"v{p.version}",
                _decision(p.promoted),
                "-" if p.against is None else f"v{p.against}",
                "-" if p.canary_prompts is None else str(p.canary_prompts),
                p.reason,
                _compare(p.metrics, p.baseline),
                _minutes(data, p.decided_at),
            ]
            for p in data.promotions
        ]
        table = _table(head, rows, raw_cols={1}, left_cols={1, 4, 5})
    else:
        head = ["learner", "published", "swapped in", "warm-up"]
        swaps = {s.version: s for s in data.swaps}
        rows = [
            [
                f"v{v.version}",
                _minutes(data, v.published_at),
                _minutes(data, swaps[v.version].at) if v.version in swaps else "never",
                _num(swaps[v.version].warm_s if v.version in swaps else None, "{:.1f} s"),
            ]
            for v in data.versions
            if v.version > 0
        ]
        table = (
            "<p class='note'>No promotion decisions on this run's bus: gating was off, so "
            "every published version was hot-swapped in without a canary eval. Times below "
            "are from the version records and the trace's swap events.</p>" + _table(head, rows)
        )
    empty = None if plot else "No version was published or swapped in."
    return _section("Promotions and rejections", plot, table, empty)


LINEAGE_NOTES = {
    "attacker": "Each attacker version as the trainer published it and its gate decided on "
    "it. The gate's figures are measured on fixed probes against the frozen base learner: "
    "success (of the probes with an outcome), self-BLEU (lower: more diverse) and embedding "
    "distance (higher: more diverse) of the queries it wrote; the base's are those a "
    "candidate was compared with. Episodes: those whose query the version wrote; pairs: "
    "the attacker pairs whose chosen query it wrote.",
}


def _lineage_section(data: RunData, role: str, versions: list[LineageVersion]) -> str:
    """A trained role other than the learner: its versions over time, each one's
    stage in the schedule and its gate's decision with the gated figures."""
    names = GATE_FIGURES.get(role) or list(dict.fromkeys(k for v in versions for k in v.figures))
    head = [role, "status", "published", "stage", "episodes", "pairs", "trained on", "DPO loss"]
    head += [n.replace("_", " ").replace("self bleu", "self-BLEU") for n in names]
    head += ["decided", "reason"]
    rows = []
    for v in versions:
        p = v.promotion
        decided = "-"
        if p is not None:
            against = "" if p.against is None else f" against v{p.against}"
            decided = f"{_minutes(data, p.decided_at)}{against}"
        rows.append(
            [
                f"v{v.version}",
                _styled(v.status),
                _minutes(data, v.published_at),
                stage_text(v.stage),
                str(v.episodes),
                str(v.pairs),
                "(base)" if v.version == 0 else str(v.trained_on),
                _num(v.train_loss, "{:.3f}"),
                *(_figure_cell(n, v.figures.get(n)) for n in names),
                decided,
                "" if p is None else p.reason,
            ]
        )
    note = LINEAGE_NOTES.get(role, f"Each {role} version, its stage and its gate's decision.")
    gated = any(v.promotion for v in versions)
    empty = "" if gated else "<p class='note'>No gate decision on this role's versions.</p>"
    return (
        f"<h2 id='lineage-{escape(role)}'>{escape(role.capitalize())} lineage</h2>\n"
        f"<p class='sub'>{escape(note)}</p>\n{empty}"
        + _table(head, rows, raw_cols={1}, left_cols={1, 3, len(head) - 1})
    )


def _crossplay_section(c: CrossPlay | None) -> str:
    if c is None:
        return ""
    head = ["attacker", *(f"vs learner v{v}" for v in c.learners)]
    head += ["self-BLEU", "embedding distance"]
    rows = [
        [
            f"v{a}",
            *(_num(x and 100 * x, "{:.0f}%") for x in c.success[i]),
            _num(c.self_bleu[i], "{:.2f}"),
            _num(c.embedding_distance[i], "{:.2f}"),
        ]
        for i, a in enumerate(c.attackers)
    ]
    probes = "" if c.probes is None else f" ({c.probes} probes"
    if probes and c.measured_at is not None:
        probes += f", measured {_when(c.measured_at)}"
    caption = (
        "Success rate of attacker version i against learner version j on the same fixed "
        "probes; the diagonal and below show whether the attacker keeps up"
        + (f"{probes})" if probes else "")
        + ". Self-BLEU (lower: more diverse) and embedding distance (higher: more diverse) "
        "are each attacker version's."
    )
    return f"<h2 id='crossplay'>Cross-play</h2>\n<p class='sub'>{escape(caption)}</p>\n" + _table(
        head, rows
    )


def _figure_cell(name: str, x: float | None) -> str:
    return _num(x and 100 * x, "{:.0f}%") if name.endswith("success") else _num(x, "{:.2f}")


def _diversity_table(data: RunData) -> str:
    head = [
        "learner",
        "queries",
        "self-BLEU",
        "embedding distance",
        "answers",
        "distinct-1",
        "distinct-2",
    ]
    rows = [
        [
            _label(data, d.version),
            str(d.queries),
            _num(d.self_bleu, "{:.3f}"),
            _num(d.embedding_distance, "{:.3f}"),
            str(d.answers),
            _num(d.distinct_1, "{:.3f}"),
            _num(d.distinct_2, "{:.3f}"),
        ]
        for d in data.diversity
    ]
    note = ""
    if data.embedding_note:
        note = (
            f"<p class='note'>Embedding distances not computed: {escape(data.embedding_note)}</p>"
        )
    return note + _table(head, rows)


def _footer(data: RunData) -> str:
    return (
        f"<footer>Written by <code>sparring report {escape(data.run_id)}</code> from the run's "
        "bus records, trace, version manifests and stored eval results. Self-BLEU: BLEU-4 with "
        "smoothing (Chen &amp; Cherry method 1) over lowercase word tokens; distinct-n: unique "
        "over all word n-grams of a version's answers.</footer>"
    )


# -- pieces ---------------------------------------------------------------------------


def _section(title: str, plot: Plot | None, body: str, empty: str | None) -> str:
    out = [f"<h2>{escape(title)}</h2>"]
    if plot is not None:
        out.append(_figure(plot))
    elif empty:
        out.append(f"<p class='note'>{escape(empty)}</p>")
    out.append(body)
    return "\n".join(out)


def _figure(plot: Plot) -> str:
    return (
        f"<figure id='fig-{plot.key}'><img alt='{escape(plot.alt)}' "
        f"src='data:image/png;base64,{plot.png_base64}'>"
        f"<figcaption><b>{escape(plot.title)}.</b> {_md_code(plot.caption)}</figcaption></figure>"
    )


def _table(
    head: Sequence[str],
    rows: Iterable[Sequence[str]],
    raw_cols: set[int] | None = None,
    left_cols: set[int] | None = None,
) -> str:
    """Cells are escaped except in ``raw_cols`` (already HTML)."""
    raw, left = raw_cols or set(), left_cols or set()

    def cls(i: int) -> str:
        return " class='l'" if i == 0 or i in left else ""

    th = "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(head))
    trs = "".join(
        "<tr>"
        + "".join(f"<td{cls(i)}>{c if i in raw else escape(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _kv(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<table class='kv'><tbody>{body}</tbody></table>"


def _label(data: RunData, version: int) -> str:
    status = data.status(version)
    return f"v{version} ({status})" if status in ("base", "rejected") else f"v{version}"


def _status(data: RunData, version: int) -> str:
    return _styled(data.status(version))


def _styled(s: str) -> str:
    return f"<span class='{s}'>{s}</span>" if s in ("promoted", "rejected") else s


def _decision(promoted: bool) -> str:
    return (
        "<span class='promoted'>promoted</span>"
        if promoted
        else ("<span class='rejected'>rejected</span>")
    )


def _compare(metrics: dict[str, float | None], baseline: dict[str, float | None]) -> str:
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g}"

    keys = list(dict.fromkeys([*metrics, *baseline]))
    return "; ".join(f"{k} {fmt(metrics.get(k))} ({fmt(baseline.get(k))})" for k in keys)


def _rate(r: Rate) -> str:
    if r.rate is None or r.lo is None or r.hi is None:
        return "-"
    return f"{100 * r.rate:.0f}% of {r.n} [{100 * r.lo:.0f}-{100 * r.hi:.0f}%]"


def _mean(m: Mean) -> str:
    if m.mean is None:
        return "-"
    interval = "" if m.lo is None or m.hi is None else f" [{m.lo:.1f}-{m.hi:.1f}]"
    return f"{m.mean:.1f} of {m.n}{interval}"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else fmt.format(x)


def _when(t: float, date: bool = True) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z" if date else "%H:%M:%S", time.localtime(t))


def _minutes(data: RunData, t: float | None) -> str:
    if t is None or data.started_at is None:
        return "-"
    return f"{(t - data.started_at) / 60:.1f} min"


def _md_code(text: str) -> str:
    """Escapes ``text`` and shows `backticked` spans as code."""
    parts = escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _diff(d: Difference) -> str:
    if d.value is None or d.lo is None or d.hi is None:
        return "-"
    return f"{points(d.value)} pts [{points(d.lo)}, {points(d.hi)}]"
