"""Render trace events as readable conversations (``sparring trace``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from sparring.tracing import TRACE_FILE

ROLE_STYLE = {
    "attacker": "red",
    "learner": "green",
    "critic": "yellow",
    "sneaky": "red",
    "judge": "yellow",
    "verifier": "yellow",
    "planner": "cyan",
    None: "blue",
}
NODE_TITLE = {
    "attack": "attacker asks",
    "respond": "learner answers",
    "critique": "critic judges the answer",
    "refine": "learner refines",
    "critique_refined": "critic judges the refinement",
    "review": "a person judges the answer",
    "review_refined": "a person judges the refinement",
    "draw": "prompt from the dataset",
    "emit": "episode recorded",
    "contrast": "learner answers again, guarded",
    "helpful": "helpful debater argues",
    "sneaky": "sneaky debater argues",
    "judge": "judge picks a side",
    "plan": "planner splits the task",
    "solve": "learner solves a part",
    "judge_part": "critic judges the part",
    "recompose": "planner recomposes the whole",
    "verify_direct": "verifier judges the direct answer",
    "verify": "verifier judges the recomposed whole",
}
VERDICT_NODES = (
    "critique",
    "critique_refined",
    "review",
    "review_refined",
    "judge_part",
    "verify_direct",
    "verify",
)


@dataclass
class Filters:
    episode: str | None = None
    role: str | None = None
    version: int | None = None
    outcome: str | None = None


def resolve_trace(target: str, runs_dir: Path = Path("runs")) -> Path | None:
    """A trace file from a path, a run directory, or a run id under ``runs_dir``;
    None means standard input ("-")."""
    if target == "-":
        return None
    for candidate in (Path(target), runs_dir / target):
        if candidate.is_file():
            return candidate
        if (candidate / TRACE_FILE).is_file():
            return candidate / TRACE_FILE
    raise FileNotFoundError(
        f"no trace at '{target}': give a run directory, a trace.jsonl file, a run id "
        f"under {runs_dir}/, or - for standard input"
    )


def read_events(
    stream: IO[str], follow: bool = False, poll_s: float = 0.3
) -> Iterator[dict[str, Any]]:
    """JSON events from a stream; other lines (e.g. docker's prefixes) are skipped."""
    while True:
        line = stream.readline()
        if not line:
            if not follow:
                return
            time.sleep(poll_s)
            continue
        start = line.find("{")
        if start < 0:
            continue
        try:
            event = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            yield event


def episodes(events: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("event") == "node" and e.get("episode_id"):
            grouped.setdefault(e["episode_id"], []).append(e)
    return grouped


def learner_version(events: list[dict[str, Any]]) -> int | None:
    for e in events:
        if e.get("node") in ("respond", "refine"):
            return e.get("version")
        if e.get("node") == "emit":
            return e.get("learner_version")
    return None


def matches(events: list[dict[str, Any]], f: Filters) -> bool:
    if f.episode and not events[0]["episode_id"].endswith(f.episode):
        return False
    if f.version is not None and learner_version(events) != f.version:
        return False
    if f.outcome:
        emitted = [e for e in events if e.get("node") == "emit"]
        if not emitted or emitted[-1].get("outcome") != f.outcome:
            return False
    return True


def render_event(e: dict[str, Any], console: Console, role_filter: str | None = None) -> None:
    role = e.get("role")
    if role_filter and role != role_filter and e.get("node") != "emit":
        return
    node = e.get("node", "?")
    who = f"{role} v{e.get('version')}" if role else "sparring"
    if e.get("reviewer"):
        who = f"{e['reviewer']} ({e.get('reason')})"
    meta = (
        f"{e.get('latency_s', 0):.2f}s · {e.get('prompt_tokens', 0)}→"
        f"{e.get('completion_tokens', 0)} tok"
    )
    body = Text(str(e.get("output") or ""))
    if node in VERDICT_NODES:
        for member in e.get("panel") or []:
            mv = member.get("verdict")
            said = (
                f"harmful={'yes' if mv['harmful'] else 'no'} · helpfulness {mv['helpfulness']}"
                if mv
                else "unreadable"
            )
            body.append(f"\n  {member['role']} ({member['model']}): {said}", style="dim")
        if e.get("disagreement") is not None:
            body.append(f"\npanel disagreement: {e['disagreement']:.2f}", style="dim")
        if e.get("judge_error"):
            body.append(f"\nJUDGE ERROR: {e['judge_error']}", style="bold magenta")
        elif v := e.get("verdict"):
            body.append(
                f"\nverdict: harmful={'yes' if v['harmful'] else 'no'} · "
                f"helpfulness {v['helpfulness']}/10 · confidence {v['confidence']}/10",
                style="bold",
            )
    if node in ("attack", "draw"):
        body = Text(f"[{e.get('category')}] ", style="dim") + body
    if node == "contrast" and e.get("written_refusal"):
        body.append(f"\nwritten refusal (pairs take it): {e['written_refusal']}", style="dim")
    if node in ("helpful", "sneaky"):
        body = Text(f"turn {e.get('turn')}, for: {e.get('position')}\n", style="dim") + body
    if node == "solve":
        body = Text(f"part {e.get('part')}: {e.get('input')}\n", style="dim") + body
    if node == "judge_part":
        body = Text(f"part {e.get('part')}\n", style="dim") + body
    if node == "plan" and e.get("plan_error"):
        body.append(f"\nPLAN ERROR: {e['plan_error']}", style="bold magenta")
    if node == "judge":
        if e.get("judge_error"):
            body.append(f"\nJUDGE ERROR: {e['judge_error']}", style="bold magenta")
        else:
            body.append(
                f"\npick: {e.get('pick')} (the {e.get('winner')} side) · "
                f"confidence {e.get('confidence')}/10",
                style="bold",
            )
    if node == "emit":
        body = Text(
            f"outcome: {e.get('outcome')} · learner v{e.get('learner_version')} · "
            f"pairs: {len(e.get('pair_ids') or [])} · {e.get('episode_s', 0):.1f}s"
        )
        if e.get("parts") is not None:
            ph, gap = e.get("part_helpfulness"), e.get("gap")
            body.append(
                f"\nparts: {e['parts']} ({e.get('parts_harmful')} harmful, mean helpfulness "
                f"{'-' if ph is None else f'{ph:.1f}'}) · part-whole gap "
                f"{'-' if gap is None else f'{gap:+.1f}'}"
            )
            if e.get("harmless_parts_harmful_whole"):
                body.append("\nharmless parts made a harmful whole", style="bold magenta")
    title = f"{NODE_TITLE.get(node, node)} — {who}"
    console.print(
        Panel(
            body,
            title=title,
            subtitle=meta,
            title_align="left",
            border_style=ROLE_STYLE.get(role, "white"),
        )
    )


def render_episode(events: list[dict[str, Any]], console: Console, f: Filters) -> None:
    console.rule(f"episode {events[0]['episode_id']}")
    for e in events:
        render_event(e, console, f.role)


def show(source: IO[str], console: Console, f: Filters, *, follow: bool = False) -> int:
    """Print matching episodes; returns how many were shown."""
    if follow:
        shown = 0
        for e in read_events(source, follow=True):
            if e.get("event") != "node":
                continue
            if f.episode and not str(e.get("episode_id", "")).endswith(f.episode):
                continue
            if f.version is not None and e.get("version") not in (f.version, None):
                continue
            render_event(e, console, f.role)
            shown += e.get("node") == "emit"
        return shown
    grouped = episodes(read_events(source))
    shown = 0
    for events in grouped.values():
        if matches(events, f):
            render_episode(events, console, f)
            shown += 1
    return shown


def open_source(path: Path | None) -> IO[str]:
    return sys.stdin if path is None else path.open(encoding="utf-8")
