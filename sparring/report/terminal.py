"""The report's terminal summary: per learner version, what the loop and the
trainer did, then how diverse the queries and answers were (two tables, each
narrow enough for an 80-column log)."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sparring.report.data import RunData


def render_summary(data: RunData, console: Console) -> None:
    console.print(_loop_table(data), highlight=False)
    for p in data.promotions:
        if not p.promoted:
            line = f"[red]v{p.version} rejected[/] (against v{p.against}): {escape(p.reason)}"
            console.print(line, soft_wrap=True)
    console.print(_diversity_table(data), highlight=False)


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
