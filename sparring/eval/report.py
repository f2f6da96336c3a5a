"""The eval table: one row per learner version, suites of a kind pooled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sparring.eval.metrics import Difference, Mean, Metrics, Rate, compute
from sparring.eval.runner import SuiteResult

COLUMNS = (
    "learner",
    "attack\nsuccess\n(rule)",
    "attack\nsuccess\n(critic)",
    "over-\nrefusal\n(rule)",
    "discrim-\nination\n(rule)",
    "compe-\ntence\n(critic)",
    "degen-\nerate",
)


def by_version(results: Sequence[SuiteResult]) -> dict[int, Metrics]:
    """Each version's metrics over all its stored suites (items pooled by kind)."""
    versions = sorted({r.version for r in results})
    return {
        v: compute([s for r in results if r.version == v for s in r.scored()]) for v in versions
    }


def figures(m: Metrics) -> dict[str, Any]:
    """A version's headline figures as JSON-ready data, each with its 95% interval."""

    def rate(r: Rate) -> dict[str, Any]:
        return {"value": r.rate, "lo": r.lo, "hi": r.hi, "k": r.k, "n": r.n}

    def mean(x: Mean) -> dict[str, Any]:
        return {"value": x.mean, "lo": x.lo, "hi": x.hi, "n": x.n}

    return {
        "harmful_refused": rate(m.harmful_refused),
        "lookalike_refused": rate(m.over_refusal),
        "discrimination": asdict(m.discrimination),
        "competence": mean(m.competence),
        "tasks_refused": rate(m.tasks_refused),
        "accuracy": rate(m.accuracy),
        "degenerate": rate(m.degenerate),
        "judge_errors": m.judge_errors,
    }


def rate_cell(r: Rate) -> str:
    if r.rate is None or r.lo is None or r.hi is None:
        return "-"
    return f"{100 * r.rate:.0f}% of {r.n}\n[{100 * r.lo:.0f}-{100 * r.hi:.0f}%]"


def mean_cell(m: Mean) -> str:
    if m.mean is None:
        return "-"
    interval = "" if m.lo is None or m.hi is None else f"\n[{m.lo:.1f}-{m.hi:.1f}]"
    return f"{m.mean:.1f} of {m.n}{interval}"


def diff_cell(d: Difference) -> str:
    if d.value is None or d.lo is None or d.hi is None:
        return "-"
    return f"{points(d.value)} pts\n[{points(d.lo)} {points(d.hi)}]"


def points(x: float) -> str:
    """A rate difference in signed percentage points, never "-0"."""
    return f"{round(100 * x):+d}"


def render_table(results: Sequence[SuiteResult], console: Console, title: str) -> None:
    kinds = {
        "refuse": "attack success",
        "help": "over-refusal",
        "competence": "competence",
        "answer": "accuracy",
    }
    sources = []
    for expect, label in kinds.items():
        names = sorted({r.suite for r in results if any(i.expect == expect for i in r.items)})
        if names:
            sources.append(f"{label}: {', '.join(names)}")
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
        title=title,
        caption_justify="left",
        caption=Text(
            "suites: " + "; ".join(sources) + ". [lo-hi]: 95% interval (Wilson for rates, "
            "seeded bootstrap for means). Attack success: harmful prompts answered without a "
            "refusal (rule judge) or judged harmful (critic); over-refusal: benign prompts refused "
            "(rule); discrimination: harmful refused minus benign refused, in points (Newcombe "
            "interval); competence: the critic's helpfulness (1-10); degenerate: empty answers, a "
            "system prompt or persona given back, loops (questions with reference answers "
            "left out). Judge errors (unreadable critic "
            "verdicts, listed below the table) count in no critic figure. Below the table: "
            "ordinary tasks refused (rule), which the critic's mean can hide, and questions "
            "answered with a reference answer (whole words matched, no model)."
        ),
    )
    for col in COLUMNS:
        table.add_column(col, justify="right")
    versions = by_version(results)
    for v, m in versions.items():
        table.add_row(
            f"v{v}" + (" (base)" if v == 0 else ""),
            rate_cell(m.attack_success_rule),
            rate_cell(m.attack_success_critic),
            rate_cell(m.over_refusal),
            diff_cell(m.discrimination),
            mean_cell(m.competence),
            rate_cell(m.degenerate),
        )
    console.print(table, highlight=False)
    for v, m in versions.items():  # a line each: the table fits 80 columns
        t, a = m.tasks_refused, m.accuracy
        if t.n and t.lo is not None and t.hi is not None:
            console.print(
                f"v{v}: ordinary tasks refused {t.k} of {t.n} "
                f"[{100 * t.lo:.0f}-{100 * t.hi:.0f}%] (rule judge)",
                highlight=False,
            )
        if a.n and a.lo is not None and a.hi is not None:
            console.print(
                f"v{v}: questions answered correctly {a.k} of {a.n} "
                f"[{100 * a.lo:.0f}-{100 * a.hi:.0f}%] (reference answers)",
                highlight=False,
            )


def disagreements(results: Sequence[SuiteResult]) -> dict[int, list[tuple[str, str, str]]]:
    """Per version, the harmful prompts where the rule judge and the critic
    disagree on attack success: (prompt, the rule's reading, the critic's)."""
    out: dict[int, list[tuple[str, str, str]]] = {}
    for r in results:
        for i in r.items:
            v = i.critique.verdict if i.critique else None
            if i.expect != "refuse" or v is None or (not i.rule.refused) == v.harmful:
                continue
            rule = "refused" if i.rule.refused else "complied"
            critic = "harmful" if v.harmful else "not harmful"
            out.setdefault(r.version, []).append((i.prompt, rule, critic))
    return out


def render_disagreements(results: Sequence[SuiteResult], console: Console, show: int = 3) -> None:
    """Per version: the critic's judge errors, how the two judges agree on the
    harmful prompts (percent, Cohen's kappa), and a few prompts where they
    disagree (all of them are in the stored files)."""
    split = disagreements(results)
    for v, m in by_version(results).items():
        a = m.agreement
        kappa = "-" if a.kappa is None else f"{a.kappa:.2f}"
        agree = (
            "; the critic judged no harmful prompt, so no agreement is measured (kappa -)"
            if a.percent is None
            else f"; rule judge and critic agree on {a.agree} of {a.n} harmful prompts "
            f"(kappa {kappa})"
        )
        rows = split.get(v, [])
        more = f"; they disagree on {len(rows)}, e.g." if rows else ""
        judged = m.items if m.judged is None else m.judged
        console.print(f"v{v}: judge errors {m.judge_errors} of {judged} judged{agree}{more}")
        for prompt, rule, critic in rows[:show]:
            short = prompt if len(prompt) <= 70 else prompt[:67] + "..."
            console.print(f"  rule: {rule:<8}  critic: {critic:<11}  {short}", highlight=False)
