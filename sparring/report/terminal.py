"""The report's terminal summary: per learner version, what the loop and the
trainer did, then how diverse the queries and answers were; each other trained
role's lineage and the cross-play table where there are (every table narrow
enough for an 80-column log)."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sparring.report.data import CrossPlay, LineageVersion, RunData
from sparring.summary import GATE_FIGURES, finals, stage_columns


def render_summary(data: RunData, console: Console) -> None:
    console.print(_loop_table(data), highlight=False)
    for p in data.promotions:
        if not p.promoted:
            line = f"[red]v{p.version} rejected[/] (against v{p.against}): {escape(p.reason)}"
            console.print(line, soft_wrap=True)
    console.print(_diversity_table(data), highlight=False)
    for role, versions in data.lineages.items():
        console.print(_lineage_table(data.run_id, role, versions), highlight=False)
        for d in (v.promotion for v in versions):
            if d is not None and not d.promoted:
                line = f"[red]{role} v{d.version} rejected[/] (against v{d.against}): "
                console.print(line + escape(d.reason), soft_wrap=True)
    if data.crossplay is not None:
        console.print(_crossplay_table(data.crossplay), highlight=False)


def _loop_table(data: RunData) -> Table:
    rewards = any(
        v.reward_margin is not None or v.reward_accuracy is not None for v in data.versions
    )
    cols = ["learner", "status", "episodes", "attack\nsuccess", "helpful", "pairs", "train\nloss"]
    if rewards:
        cols += ["reward\nmargin", "reward\naccuracy"]
    table = _table(
        f"sparring report: {data.run_id} (per learner version)",
        cols,
        "attack success (% of n judged) and helpfulness (1-10): the loop's critic on the "
        "version's episodes; pairs: built from its episodes",
    )
    for v in data.versions:
        rate = v.attack_success
        row = [
            f"v{v.version}",
            _styled(data.status(v.version)),
            str(v.episodes),
            "-" if rate.rate is None else f"{100 * rate.rate:.0f}% of {rate.n}",
            _num(v.helpfulness.mean, "{:.1f}"),
            str(v.pairs),
            _num(v.train_loss, "{:.3f}"),
        ]
        if rewards:
            acc = None if v.reward_accuracy is None else 100 * v.reward_accuracy
            row += [_num(v.reward_margin, "{:+.3f}"), _num(acc, "{:.0f}%")]
        table.add_row(*row)
    return table


def _diversity_table(data: RunData) -> Table:
    cols = [
        "learner",
        "queries",
        "self-BLEU",
        "embedding\ndistance",
        "answers",
        "distinct-1",
        "distinct-2",
    ]
    note = f" (embedding distance: {data.embedding_note})" if data.embedding_note else ""
    table = _table(
        "diversity (per learner version)",
        cols,
        "queries: self-BLEU (lower = more diverse) and embedding distance (higher = more "
        "diverse); answers: distinct-n (higher = more diverse)" + note,
    )
    for d in data.diversity:
        table.add_row(
            f"v{d.version}",
            str(d.queries),
            _num(d.self_bleu, "{:.3f}"),
            _num(d.embedding_distance, "{:.3f}"),
            str(d.answers),
            _num(d.distinct_1, "{:.3f}"),
            _num(d.distinct_2, "{:.3f}"),
        )
    return table


def _lineage_table(run_id: str, role: str, versions: list[LineageVersion]) -> Table:
    names = GATE_FIGURES.get(role) or list(dict.fromkeys(k for v in versions for k in v.figures))
    heads = {"success": "success", "self_bleu": "self-\nBLEU", "embedding_distance": "emb.\ndist."}
    stages = [(v.version, v.stage) for v in versions]
    stage_heads, stage_cells = stage_columns(stages)
    final = finals(stages)
    cols = [role, "status", *stage_heads, "epi-\nsodes", "pairs"]
    cols += [heads.get(n, n.replace("_", "\n")) for n in names]
    table = _table(
        f"{role} lineage: {run_id} (per {role} version)",
        cols,
        f"episodes: those the {role} version served; pairs: those whose chosen side it wrote; "
        "the rest: its gate's figures (the base's: those a candidate was compared with)"
        + ("; vs: the version serving while it trained" if stage_heads else "")
        + (f"; {final}: the run's final version" if final else ""),
    )
    for v, staged in zip(versions, stage_cells, strict=True):
        figures = [
            _num(x and 100 * x, "{:.0f}%") if n.endswith("success") else _num(x, "{:.2f}")
            for n, x in ((n, v.figures.get(n)) for n in names)
        ]
        table.add_row(
            f"v{v.version}", _styled(v.status), *staged, str(v.episodes), str(v.pairs), *figures
        )
    return table


def _crossplay_table(c: CrossPlay) -> Table:
    cols = [
        "attacker",
        *(f"vs\nlearner v{v}" for v in c.learners),
        "self-BLEU",
        "embedding\ndistance",
    ]
    table = _table(
        "cross-play (per attacker version)",
        cols,
        "success rate of attacker version i against learner version j on the same fixed "
        "probes; the diagonal and below show whether the attacker keeps up",
    )
    for i, a in enumerate(c.attackers):
        table.add_row(
            f"v{a}",
            *(_num(x and 100 * x, "{:.0f}%") for x in c.success[i]),
            _num(c.self_bleu[i], "{:.2f}"),
            _num(c.embedding_distance[i], "{:.2f}"),
        )
    return table


def _table(title: str, cols: list[str], caption: str) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
        title=title,
        caption=caption,
        caption_justify="left",
    )
    for c in cols:
        table.add_column(c, justify="left" if c == "status" else "right", no_wrap=True)
    return table


def _styled(status: str) -> str:
    colour = {"promoted": "green", "rejected": "red", "live": "blue"}.get(status)
    return f"[{colour}]{status}[/]" if colour else status


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else fmt.format(x)
