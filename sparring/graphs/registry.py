"""The one registry of graph variants: ``sparring graph list``, ``langgraph.json``,
``loop.graph`` and the config's role check all read it.

A graph registers its build function with :func:`register_graph`. Built-in
graphs are the modules named in :data:`BUILTIN`; a package ships its own under
the entry-point group ``sparring.graphs`` (``name = "package.module"``, the
module registering a graph of that name); a user's own file is named by path in
``loop.graph`` (``my_graphs/critic_twice.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from sparring.agents.prompts import load_prompt_set
from sparring.config import ROLES, TRAINED_ROLE, ConfigError, RunConfig, load_config
from sparring.graphs.api import CoreContext

BUILTIN = ("redteam", "self_refine", "debate", "decompose")
ENTRY_POINTS = "sparring.graphs"

ContextBuilder = Callable[[RunConfig, CoreContext], CoreContext]
B = TypeVar("B", bound=Callable[..., Any])


class GraphError(ValueError):
    """A graph that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class GraphSpec:
    name: str
    roles: tuple[str, ...]
    description: str
    source: str
    build: Callable[..., Any]
    # graphs without an attacker draw prompts: their shipped set (package data
    # of sparring.agents; loop.prompts replaces it) and the columns they need
    prompt_set: str | None = None
    prompt_fields: tuple[str, ...] = ()
    # the graph's runtime context, built from the config and the core context
    context: ContextBuilder | None = None

    def make_context(self, cfg: RunConfig, core: CoreContext) -> CoreContext:
        return core if self.context is None else self.context(cfg, core)


_REGISTRY: dict[str, GraphSpec] = {}


def register_graph(
    name: str,
    *,
    roles: tuple[str, ...] | list[str],
    context: ContextBuilder | None = None,
    prompt_set: str | None = None,
    prompt_fields: tuple[str, ...] = (),
    description: str | None = None,
) -> Callable[[B], B]:
    """Register ``build(checkpointer) -> compiled graph`` as graph ``name``.
    ``roles``: the roles its nodes call (a run config must bind them);
    ``context(cfg, core)``: its runtime context (default: the core one);
    ``description``: default, the first line of the module's docstring."""

    def register(build: B) -> B:
        module = build.__module__
        source = getattr(sys.modules.get(module), "__file__", None) or module
        if module.startswith("sparring.graphs."):  # a built-in, as langgraph.json names it
            source = f"sparring/graphs/{module.rsplit('.', 1)[1]}.py"
        doc = (description or build.__globals__.get("__doc__") or "").strip().splitlines()
        spec = _checked(
            GraphSpec(
                name,
                tuple(roles),
                doc[0] if doc else "",
                source,
                build,
                prompt_set,
                tuple(prompt_fields),
                context,
            )
        )
        known = _REGISTRY.get(name)
        if known is not None and known.build.__module__ != module:
            raise GraphError(
                f"graph '{name}' ({spec.source}) is already registered by {known.source}"
            )
        _REGISTRY[name] = spec
        return build

    return register


def _checked(spec: GraphSpec) -> GraphSpec:
    if not spec.roles or not all(isinstance(r, str) and r for r in spec.roles):
        raise GraphError(
            f"graph '{spec.name}' ({spec.source}): ROLES must be a non-empty list of names"
        )
    return spec


def is_path(name: str) -> bool:
    return name.endswith(".py") or "/" in name


def _legacy_spec(module: Any, name: str, source: str) -> GraphSpec:
    """A file that defines ``ROLES`` and ``build`` instead of registering."""
    missing = [a for a in ("ROLES", "build") if not hasattr(module, a)]
    if missing:
        raise GraphError(
            f"graph '{name}' ({source}) must define {' and '.join(missing)}: ROLES, the roles "
            "its nodes call, and build(checkpointer) returning a compiled StateGraph "
            "(or register its build function with @sparring.graphs.register_graph)"
        )
    roles = module.ROLES
    doc = (module.__doc__ or "").strip().splitlines()
    return _checked(
        GraphSpec(
            name,
            tuple(roles),
            doc[0] if doc else "",
            source,
            module.build,
            getattr(module, "PROMPT_SET", None),
            tuple(getattr(module, "PROMPT_FIELDS", ())),
            getattr(module, "context", None),
        )
    )


def _load_file(path: Path) -> GraphSpec:
    if not path.is_file():
        raise GraphError(f"graph file {path} does not exist")
    module_name = f"sparring_user_graph_{path.stem}"
    mod_spec = importlib.util.spec_from_file_location(module_name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise GraphError(f"graph file {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[module_name] = module  # dataclasses in the file look their module up
    try:
        mod_spec.loader.exec_module(module)
    except GraphError:
        raise
    except Exception as err:
        raise GraphError(f"graph file {path} failed to import: {err!r}") from err
    mine = [s for s in _REGISTRY.values() if s.build.__module__ == module_name]
    if len(mine) > 1:
        names = ", ".join(s.name for s in mine)
        raise GraphError(f"graph file {path} registers several graphs ({names}); keep one")
    return mine[0] if mine else _legacy_spec(module, path.stem, str(path))


def _entry_point(name: str) -> GraphSpec | None:
    for ep in entry_points(group=ENTRY_POINTS, name=name):
        try:
            ep.load()
        except Exception as err:
            raise GraphError(
                f"graph '{name}' (entry point {ep.value}) failed to import: {err!r}"
            ) from err
        if name not in _REGISTRY:
            raise GraphError(
                f"graph '{name}' (entry point {ep.value}) registers no graph named '{name}'"
            )
        return _REGISTRY[name]
    return None


@cache
def load_graph(name: str) -> GraphSpec:
    """A registered graph by name (built-in or from a package's entry point), or
    a graph module by file path."""
    if is_path(name):
        return _load_file(Path(name))
    if name in BUILTIN:
        importlib.import_module(f"sparring.graphs.{name}")
        return _REGISTRY[name]
    spec = _entry_point(name)
    if spec is None:
        raise GraphError(
            f"unknown graph '{name}'; built-in graphs: {', '.join(graph_names())} "
            "(or give the path of your own graph file)"
        )
    return spec


def graph_names() -> list[str]:
    """The built-in graphs, then those installed packages ship."""
    shipped = sorted({ep.name for ep in entry_points(group=ENTRY_POINTS)} - set(BUILTIN))
    return [*BUILTIN, *shipped]


def build_graph(name: str, checkpointer: Any = None) -> Any:
    return load_graph(name).build(checkpointer)


def list_graphs() -> list[GraphSpec]:
    return [load_graph(n) for n in graph_names()]


def langgraph_spec() -> dict[str, Any]:
    """``langgraph.json`` (LangGraph's own tooling): every built-in graph."""
    graphs = {name: f"./{load_graph(name).source}:graph" for name in BUILTIN}
    return {"dependencies": ["."], "graphs": graphs}


def check_roles(cfg: RunConfig, source: Path | str) -> None:
    """Before any model is called: the graph exists, every role it calls is
    bound, no bound role is one that no graph knows (a typo), and its prompt
    files load. Raises :class:`~sparring.config.ConfigError`."""
    try:
        spec = load_graph(cfg.loop.graph)
    except GraphError as err:
        raise ConfigError(f"{source}: loop.graph: {err}") from None
    _check_bound(cfg, source, spec)
    known = {*ROLES, *spec.roles, *cfg.loop.critics}
    for builtin in BUILTIN:
        known.update(load_graph(builtin).roles)
    needed = ", ".join(spec.roles)
    for role in cfg.roles:
        if role not in known:
            raise ConfigError(
                f"{source}: roles.{role}: unknown role '{role}' for graph '{spec.name}', "
                f"which calls {needed} (no built-in graph calls it either)"
            )
    _check_prompts(cfg, source, spec)


def _check_bound(cfg: RunConfig, source: Path | str, spec: GraphSpec) -> None:
    needed = ", ".join(spec.roles)
    if TRAINED_ROLE not in cfg.roles:
        raise ConfigError(
            f"{source}: roles: the config does not bind '{TRAINED_ROLE}', the role the trainer "
            f"improves (graph '{spec.name}' calls {needed})"
        )
    for role in spec.roles:
        if role not in cfg.roles:
            raise ConfigError(
                f"{source}: roles: graph '{spec.name}' calls role '{role}', which the config "
                f"does not bind; add roles.{role}: {{engine: ..., model: ...}} "
                f"(the graph needs {needed})"
            )
    # the panel judges where the graph calls the critic (debate has a judge instead)
    for role in cfg.loop.critics if "critic" in spec.roles else []:
        if role not in cfg.roles:
            raise ConfigError(
                f"{source}: loop.critics: '{role}' is not bound; add roles.{role}: "
                "{engine: ..., model: ...}"
            )


def _check_prompts(cfg: RunConfig, source: Path | str, spec: GraphSpec) -> None:
    if cfg.loop.benign_prompts is not None and cfg.loop.benign_share > 0:
        try:
            load_prompt_set(cfg.loop.benign_prompts, "benign_set.jsonl")
        except (OSError, ValueError) as err:
            raise ConfigError(f"{source}: loop.benign_prompts: {err}") from None
    if spec.prompt_set is not None:
        try:
            load_prompt_set(cfg.loop.prompts, spec.prompt_set, spec.prompt_fields)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{source}: loop.prompts (graph '{spec.name}'): {err}") from None


def load_run_config(path: Path | str | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """:func:`~sparring.config.load_config`, then :func:`check_roles`: a config
    a run can start from."""
    cfg = load_config(path, overrides)
    check_roles(cfg, path or "<defaults>")
    return cfg
