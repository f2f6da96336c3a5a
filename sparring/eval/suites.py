"""Evaluation suites: prompts with what a good answer does (``expect``).

A suite is a shipped name (``harmful``, ``benign_scary``, ``competence``,
``answers``: written for this project, kept out of what the loop trains on), a JSONL or CSV
file, or a Hugging Face ``datasets`` dataset saved on disk (``save_to_disk``).
Public suites plug in by file with column names, e.g. HarmBench's CSV:
``Columns(prompt="Behavior", category="SemanticCategory", context="ContextString",
default_expect="refuse")``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

Expect = Literal["refuse", "help", "competence", "answer"]
EXPECTS: dict[str, str] = {
    "refuse": "a harmful request: want a refusal or a safe redirection (attack success rate)",
    "help": "a benign request that sounds dangerous: want a helpful answer (over-refusal rate)",
    "competence": "an ordinary task: want a competent answer (critic's helpfulness score)",
    "answer": "a question with reference answers (an answers column): want one of them "
    "(accuracy, whole words matched, no model)",
}
SHIPPED = ("harmful", "benign_scary", "competence", "answers")
# the kinds a critic can judge (answers are matched against their references instead)
CRITIC_KINDS = ("refuse", "help", "competence")


class SuiteError(ValueError):
    """A suite that cannot be read; the message names the file, the row or column,
    and what was expected."""


@dataclass(frozen=True)
class SuiteItem:
    prompt: str
    category: str
    expect: Expect
    answers: tuple[str, ...] = ()  # expect answer: the accepted answers
    wrong: tuple[str, ...] = ()  # ... and answers that make it wrong (a decoy in the prompt)


@dataclass(frozen=True)
class Suite:
    name: str  # where results go: eval/<name>/vN.json
    source: str  # the file, directory or "shipped:<name>"
    items: tuple[SuiteItem, ...]

    def head(self, limit: int | None) -> Suite:
        return self if limit is None else Suite(self.name, self.source, self.items[:limit])

    @property
    def sha256(self) -> str:
        """A fingerprint of the items: stored results are reused only for the same items."""
        text = json.dumps(
            [
                [i.prompt, i.category, i.expect]
                + ([list(i.answers)] if i.answers else [])
                + ([list(i.wrong)] if i.wrong else [])
                for i in self.items
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Columns:
    """Which columns of a file hold what; ``default_expect`` is for rows (or files)
    without an expect value. ``context``: a column whose text, when present, goes
    before the prompt (HarmBench's contextual behaviours)."""

    prompt: str = "prompt"
    category: str = "category"
    expect: str = "expect"
    context: str | None = None
    answers: str = "answers"  # expect answer: a list, or one string split at "|"
    wrong: str = "wrong"  # expect answer, optional: answers that make it wrong, the same way
    default_expect: Expect | None = None
    explicit: frozenset[str] = field(default_factory=frozenset)  # names the user gave


def load_suite(spec: str, columns: Columns | None = None, split: str | None = None) -> Suite:
    """A shipped suite by name, or a suite file / dataset directory by path."""
    columns = columns or Columns()
    path = Path(spec)
    if spec in SHIPPED and not path.exists():
        text = resources.files("sparring.eval").joinpath(f"data/{spec}.jsonl").read_text()
        return Suite(spec, f"shipped:{spec}", _items(_jsonl(text, spec), spec, Columns()))
    if path.is_dir():
        rows = _dataset_rows(path, split)
        name = path.name + (f"-{split}" if split else "")
        return Suite(_safe(name), str(path), _items(rows, str(path), columns))
    if not path.is_file():
        raise SuiteError(
            f"suite '{spec}': no such file or directory, and not a shipped suite "
            f"(shipped: {', '.join(SHIPPED)}); give a .jsonl or .csv file or a directory "
            "written by datasets' save_to_disk"
        )
    if path.suffix not in (".jsonl", ".csv"):
        raise SuiteError(
            f"{path}: unsupported suite file type '{path.suffix}'; expected .jsonl or .csv"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise SuiteError(f"{path}: not UTF-8 text ({err.reason})") from None
    if path.suffix == ".jsonl":
        rows = _jsonl(text, str(path))
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    return Suite(_safe(path.stem), str(path), _items(rows, str(path), columns))


def _jsonl(text: str, where: str) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SuiteError(f"{where}: line {n} is not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise SuiteError(f"{where}: line {n} is not a JSON object")
        rows.append(row)
    return rows


def _dataset_rows(path: Path, split: str | None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise SuiteError(
            f"{path}: reading a datasets directory needs the 'datasets' package "
            "(pip install 'sparring[ml]')"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise SuiteError(
            f"{path}: not a dataset saved with datasets' save_to_disk ({err})"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = sorted(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in loaded:
            raise SuiteError(
                f"{path}: choose a split with --split (it has {', '.join(splits)})"
                if split is None
                else f"{path}: no split '{split}' (it has {', '.join(splits)})"
            )
        loaded = loaded[split]
    elif split is not None:
        raise SuiteError(f"{path}: is a single dataset without splits; leave out --split")
    return [dict(row) for row in loaded]


def _items(rows: list[dict[str, Any]], where: str, cols: Columns) -> tuple[SuiteItem, ...]:
    if not rows:
        raise SuiteError(f"{where}: no rows")
    _check_columns(set().union(*(r.keys() for r in rows)), where, cols)
    return tuple(_item(row, n, where, cols) for n, row in enumerate(rows, 1))


def _check_columns(present: set[str], where: str, cols: Columns) -> None:
    have = f"columns: {', '.join(sorted(map(str, present)))}"
    wanted = {"prompt": cols.prompt, "context": cols.context}
    wanted |= {r: getattr(cols, r) for r in ("category", "expect") if r in cols.explicit}
    for role, col in wanted.items():
        if col and col not in present:
            raise SuiteError(
                f"{where}: no column '{col}' ({have}); it should hold the {role} of each "
                f"row: name the right one with --{role}-column"
            )
    if cols.expect not in present and cols.default_expect is None:
        raise SuiteError(
            f"{where}: no column '{cols.expect}' ({have}) and no --expect; each row needs "
            f"an expect value ({', '.join(EXPECTS)}): add the column, or give --expect"
        )


def _item(row: dict[str, Any], n: int, where: str, cols: Columns) -> SuiteItem:
    prompt = str(row.get(cols.prompt) or "").strip()
    if not prompt:
        raise SuiteError(f"{where}: row {n} has an empty '{cols.prompt}'")
    if cols.context and (context := str(row.get(cols.context) or "").strip()):
        prompt = f"{context}\n\n---\n\n{prompt}"  # HarmBench's layout
    expect = str(row.get(cols.expect) or "").strip() or cols.default_expect
    if expect not in EXPECTS:
        got = f"'{expect}'" if expect else f"no '{cols.expect}' value"
        raise SuiteError(
            f"{where}: row {n} has {got}; expected one of {', '.join(EXPECTS)} "
            "(or give --expect for rows without one)"
        )
    category = str(row.get(cols.category) or "").strip() or "general"
    answers: tuple[str, ...] = ()
    wrong: tuple[str, ...] = ()
    if expect == "answer":
        answers = _answers(row.get(cols.answers), cols.answers, n, where)
        if not answers:
            raise SuiteError(
                f"{where}: row {n} expects an answer but has no '{cols.answers}' value: give "
                "the accepted answers as a list, or one string with | between them "
                "(--answers-column names another column)"
            )
        wrong = _answers(row.get(cols.wrong), cols.wrong, n, where)
    return SuiteItem(prompt, category, cast(Expect, expect), answers, wrong)


def _answers(raw: Any, col: str, n: int, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = raw.split("|")
    if not isinstance(raw, list | tuple) or not all(isinstance(a, str | int) for a in raw):
        raise SuiteError(
            f"{where}: row {n} has a '{col}' value of type {type(raw).__name__}; expected a "
            "list of strings, or one string with | between them"
        )
    return tuple(a for a in (str(x).strip() for x in raw) if a)


# a whole word or number: no letter, digit or hyphen beside it, and no decimal
# point or thousands comma joining it to a digit ("8" is not in "18", "7.8",
# "-8" or "forty-eight")
_BEFORE, _AFTER = r"(?<![a-z0-9-])(?<![0-9][.,])", r"(?![a-z0-9-])(?![.,][0-9])"


def answered(text: str, answers: tuple[str, ...], wrong: tuple[str, ...] = ()) -> bool:
    """Whether ``text`` gives one of ``answers`` as whole words (case-insensitive)
    and none of ``wrong``: "Canberra" is in "It is Canberra.", "8" is not in "18"."""
    low = text.lower()

    def has(a: str) -> bool:
        return re.search(_BEFORE + re.escape(a.lower()) + _AFTER, low) is not None

    return any(map(has, answers)) and not any(map(has, wrong))


def correct(item: SuiteItem, text: str, degenerate: bool) -> bool:
    """Whether ``text`` answers question ``item`` right: one of its answers and
    none of its wrong ones (:func:`answered`), and not ``degenerate`` (a looping
    answer that happens to hold the answer is not one)."""
    return not degenerate and answered(text, item.answers, item.wrong)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "suite"


def normalise(text: str) -> str:
    """Lower case, letters and digits only: how prompts are compared for overlap."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))
