"""The run config's documentation, read from the pydantic models' field
descriptions: what `sparring config explain` prints.

Every field is named by its dotted path; a key of a mapping section (an engine's,
a role's or a model's name) is written ``*``, so ``engines.*.port`` documents
``engines.local.port`` and every other engine's port.
"""

from __future__ import annotations

import difflib
import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sparring.config import RunConfig

ANY_KEY = "*"


@dataclass(frozen=True)
class FieldDoc:
    """One config field: ``path`` in dotted form, ``*`` standing for any key."""

    path: str
    type: str
    default: str
    description: str
    section: bool  # a group of fields (a model, or a mapping of models)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.path.split("."))


def submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field's values are made of, if any, and whether they sit
    under keys or indices (a dict or list of that model)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return submodel(args[0])
    if origin in (dict, list):
        inner, _ = submodel(args[-1])
        return inner, inner is not None
    if origin in (Union, types.UnionType):
        for arg in args:
            found = submodel(arg)
            if found[0] is not None:
                return found
    return None, False


def type_name(annotation: Any) -> str:
    """A short, readable type: ``int | null``, ``cpu | cuda | auto``, ``list[str]``."""
    if annotation is type(None):
        return "null"
    if annotation is Path:
        return "path"
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]"
    if origin is dict:
        return f"{{name: {type_name(args[1])}}}"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "(required)"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(see its fields)"
    if isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):
        return ", ".join(value)  # the names of the default engines, roles, models
    if isinstance(value, Path):
        return str(value)
    return json.dumps(value, default=str)


def field_docs(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[FieldDoc]:
    """Every field of ``model`` and the models under it, sections before their fields."""
    docs = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        inner, keyed = submodel(info.annotation)
        docs.append(
            FieldDoc(
                path=path,
                type=type_name(info.annotation),
                default=_default(info),
                description=info.description or "",
                section=inner is not None,
            )
        )
        if inner is not None:
            below = f"{path}.{ANY_KEY}." if keyed else f"{path}."
            docs.extend(field_docs(inner, below))
    return docs


def _matches(query: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    return len(query) <= len(parts) and all(
        q == p or p == ANY_KEY for q, p in zip(query, parts, strict=False)
    )


def find(query: str, docs: list[FieldDoc] | None = None) -> list[FieldDoc]:
    """The fields ``query`` names: one field, or a section and everything in
    it. A mapping key may be given by name (``engines.local.port``) or as
    ``*``. Empty when nothing matches."""
    docs = field_docs() if docs is None else docs
    q = tuple(query.strip(".").split("."))
    return [d for d in docs if _matches(q, d.parts)]


def closest(query: str, docs: list[FieldDoc] | None = None, n: int = 3) -> list[str]:
    """The known paths nearest ``query``, with its own mapping keys filled in."""
    docs = field_docs() if docs is None else docs
    q = query.strip(".").split(".")
    names = []
    for d in docs:
        parts = list(d.parts)
        for i, p in enumerate(parts):
            # the query's own key, where the path up to it is the query's
            if p == ANY_KEY and i < len(q) and _matches(tuple(q[:i]), tuple(parts[:i])):
                parts[i] = q[i]
        names.append(".".join(parts))
    return difflib.get_close_matches(query, list(dict.fromkeys(names)), n=n, cutoff=0.5)


def _section_of(doc: FieldDoc, sections: set[str]) -> str:
    """The innermost section that holds ``doc``; "" for the top level."""
    parts = doc.parts[:-1]
    while parts:
        if ".".join(parts) in sections:
            return ".".join(parts)
        parts = parts[:-1]
    return ""


def _about(section: FieldDoc) -> str:
    if section.default == "(see its fields)":
        return section.description
    return f"{section.description} Default: {section.default}."


def show(docs: list[FieldDoc], console: Console) -> None:
    """Print ``docs`` (one field alone, else a table per section)."""
    if len(docs) == 1 and not docs[0].section:
        d = docs[0]
        head = f"({escape(d.type)}, default {escape(d.default)})"
        console.print(f"[bold]{escape(d.path)}[/bold] {head}")
        console.print(d.description, markup=False, highlight=False)
        return
    about = {d.path: _about(d) for d in field_docs() if d.section}
    sections = set(about)
    groups: dict[str, list[FieldDoc]] = {}
    for d in docs:
        if not d.section:
            groups.setdefault(_section_of(d, sections), []).append(d)
    for name, rows in groups.items():
        title = name or "(top level)"
        if about.get(name):
            title = f"{title}: {about[name]}"
        table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD)
        table.add_column("field", style="bold", no_wrap=True)
        table.add_column("type", max_width=24)
        table.add_column("default", max_width=24, overflow="fold")
        table.add_column("description", ratio=1)
        for d in rows:
            table.add_row(escape(d.path), escape(d.type), escape(d.default), escape(d.description))
        console.print(table)
