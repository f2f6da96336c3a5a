"""The ``sparring eval`` command (registered in :mod:`sparring.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import click

from sparring.bus import BusError
from sparring.config import ConfigError, parse_sets
from sparring.eval.suites import (
    CRITIC_KINDS,
    EXPECTS,
    SHIPPED,
    Columns,
    Expect,
    SuiteError,
    load_suite,
)
from sparring.serving.engine import EngineError


@click.command("eval")
@click.argument("run")
@click.option(
    "--version",
    "-v",
    "versions",
    multiple=True,
    default=("all",),
    show_default=True,
    metavar="N|all|latest",
    help="Learner version(s) to evaluate (repeatable); 0 is the base model.",
)
@click.option(
    "--suite",
    "-s",
    "suites",
    multiple=True,
    default=SHIPPED,
    show_default=True,
    metavar="NAME|PATH",
    help="A shipped suite, a .jsonl/.csv file, or a datasets directory (save_to_disk); repeatable.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Only the first K prompts of each suite (a quick look).",
)
@click.option("--force", is_flag=True, help="Redo (suite, version) pairs already stored.")
@click.option(
    "--prompt-column",
    default="prompt",
    show_default=True,
    help="Files: the column holding the prompt.",
)
@click.option(
    "--category-column",
    default="category",
    show_default=True,
    help="Files: the column holding a category (optional).",
)
@click.option(
    "--expect-column",
    default="expect",
    show_default=True,
    help="Files: the column holding what a good answer does.",
)
@click.option(
    "--answers-column",
    default="answers",
    show_default=True,
    help="Files: the column holding an answer row's accepted answers (a list, or | between).",
)
@click.option(
    "--context-column",
    default=None,
    help="Files: a column whose text goes before the prompt (HarmBench: ContextString).",
)
@click.option(
    "--expect",
    "default_expect",
    type=click.Choice(list(EXPECTS)),
    default=None,
    help="Files: what a good answer does, for rows without an expect value.",
)
@click.option("--split", default=None, help="Datasets directories with several splits: which one.")
@click.option(
    "--temperature",
    type=click.FloatRange(0, 2),
    default=0.0,
    show_default=True,
    help="The learner's sampling temperature (0: greedy, reproducible).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Longest answer (default: the run's roles.learner.max_tokens).",
)
@click.option(
    "--system-prompt",
    "system",
    default="served",
    show_default=True,
    metavar="served|template|TEXT",
    help="The learner's system prompt: served (learner_system.txt, as the loop "
    "serves it), template (none sent: the chat template's own default) or TEXT. "
    "Results of each condition are stored apart (vN.json, vN-template.json, ...).",
)
@click.option(
    "--critic-on",
    "critic_on",
    multiple=True,
    type=click.Choice(list(CRITIC_KINDS)),
    default=CRITIC_KINDS,
    show_default=True,
    help="Which prompts the critic judges too (repeatable); the rule judge reads "
    "every answer, and answer prompts are matched against their reference answers. "
    "'--critic-on competence' skips the critic where refusal is what counts.",
)
@click.option(
    "--batch",
    is_flag=True,
    help="Serve the learner with continuous batching (faster on a CPU; "
    "still greedy, but batch composition can reword a few answers on a rerun).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Prompts in flight at once (the critic's engine batches them).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a field of the run's config, e.g. to bind roles.critic to a "
    "stronger model (repeatable).",
)
@click.option(
    "--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def eval_command(
    run: str,
    versions: tuple[str, ...],
    suites: tuple[str, ...],
    limit: int | None,
    force: bool,
    prompt_column: str,
    category_column: str,
    expect_column: str,
    answers_column: str,
    context_column: str | None,
    default_expect: str | None,
    split: str | None,
    temperature: float,
    max_tokens: int | None,
    system: str,
    critic_on: tuple[str, ...],
    batch: bool,
    concurrency: int,
    sets: tuple[str, ...],
    runs_dir: Path,
    no_progress: bool,
) -> None:
    """Evaluate a run's learner versions on held-out suites, with two judges.

    RUN is a run directory or a run id under runs/. Each version (v0: the base
    model; vN: runs/RUN/versions/learner/vN) answers every prompt greedily with
    the learner's system prompt on the run's own engines (started here, on free
    ports). Each answer is judged by a rule-based refusal classifier (phrase
    patterns, no model) and by the run's critic (the same base critic for every
    version). Results go to runs/RUN/eval/SUITE/vN.json (answers, verdicts,
    rule judgements, metrics); a rerun skips pairs already stored with the same
    prompts and settings (--force redoes them). The table shows, per version,
    attack success rate (harmful prompts not refused / judged harmful),
    over-refusal rate (benign look-alikes refused), discrimination (harmful
    refused minus look-alikes refused), competence (critic helpfulness 1-10),
    degenerate answers (empty, a system prompt given back, loops), each with a
    95% interval; below it ordinary tasks refused (rule), questions answered
    with a reference answer (accuracy, no model), judge errors (counted
    apart) and how the two judges agree (percent and Cohen's kappa); then the
    prompts where they disagree.

    --system-prompt template evaluates the learner as users who send no
    system prompt see it (the chat template inserts its own default).

    \b
    Shipped suites (written for this project, never trained on):
      harmful       harmful requests: want refusal or safe redirection
      benign_scary  look-alikes: benign requests in harmful words: want help
      competence    ordinary tasks: want a competent answer
      answers       questions with reference answers: want one (accuracy)

    A suite file has a prompt column and an expect column (refuse, help,
    competence, or answer with an answers column: a list, or one string with
    | between answers), or --expect for the whole file. Public suites plug in by
    file, without shipping them:

    \b
      # HarmBench: data/behavior_datasets/harmbench_behaviors_text_all.csv
      sparring eval RUN -s harmbench_behaviors_text_all.csv --prompt-column Behavior \\
          --category-column SemanticCategory --context-column ContextString --expect refuse
      # JailbreakBench JBB-Behaviors: data/harmful-behaviors.csv, data/benign-behaviors.csv
      sparring eval RUN -s harmful-behaviors.csv --prompt-column Goal \\
          --category-column Category --expect refuse
      sparring eval RUN -s benign-behaviors.csv --prompt-column Goal \\
          --category-column Category --expect help

    \b
    Examples:
      sparring eval RUN --limit 5                  # a quick look at every version
      sparring eval RUN -v 0 -v latest             # base vs newest, all shipped suites
      sparring eval RUN -s harmful -s my.jsonl     # a shipped suite and your own
    """
    import asyncio

    from rich.console import Console

    # lazy: the runner brings langgraph and the openai client; other commands skip them
    from sparring.eval.report import render_disagreements, render_table
    from sparring.eval.runner import (
        EvalError,
        EvalOptions,
        Evaluation,
        condition_tag,
        resolve_run,
        result_name,
        run_config,
    )

    given = {
        role
        for role, value, default in (
            ("category", category_column, "category"),
            ("expect", expect_column, "expect"),
        )
        if value != default
    }
    columns = Columns(
        prompt=prompt_column,
        category=category_column,
        expect=expect_column,
        context=context_column,
        answers=answers_column,
        default_expect=cast(Expect | None, default_expect),
        explicit=frozenset(given),
    )
    opts = EvalOptions(
        versions=versions,
        limit=limit,
        force=force,
        temperature=temperature,
        max_tokens=max_tokens,
        concurrency=concurrency,
        progress=not no_progress,
        system=system,
        critic_on=critic_on,
        batch=batch,
    )
    try:
        loaded = [load_suite(s, columns, split) for s in dict.fromkeys(suites)]
        names = [s.name for s in loaded]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise click.ClickException(
                f"two suites would both be stored as eval/{dup[0]}/: rename one of the files"
            )
        run_dir = resolve_run(run, runs_dir)
        evaluation = Evaluation(run_dir, run_config(run_dir, _overrides(sets)), loaded, opts)
        evaluation.plan()
        if evaluation.skipped:
            done = ", ".join(f"v{v} {name}" for name, v in evaluation.skipped)
            click.echo(f"already stored, skipped: {done} (--force redoes them)", err=True)
        results = asyncio.run(evaluation.run())
    except (SuiteError, EvalError, EngineError, ConfigError, BusError) as err:
        raise click.ClickException(str(err)) from None
    console = Console()
    condition = "" if system == "served" else f", system prompt: {condition_tag(system)}"
    title = f"sparring eval: {run_dir.name} (per learner version{condition})"
    render_table(results, console, title)
    render_disagreements(results, console)
    console.print(f"results: {run_dir / 'eval'}/SUITE/{result_name('N', system)}")


def _overrides(sets: tuple[str, ...]) -> dict[str, Any]:
    try:
        return parse_sets(sets)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--set") from None
