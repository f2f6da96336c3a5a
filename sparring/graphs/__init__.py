"""Graph variants: short modules composing the shared nodes (:mod:`.nodes`).

A graph module declares its own state and context beside its nodes (subclasses
of :class:`CoreState` and :class:`CoreContext`) and registers its build
function with :func:`register_graph`; its docstring's first line describes it.
What a graph file imports is here (:mod:`.api`, :mod:`.registry`); the shared
nodes are in :mod:`.nodes`.
"""

from sparring.graphs.api import (
    CoreContext,
    CoreState,
    Traced,
    Update,
    binding_of,
    extend,
    model_ref,
    node,
    trace,
    traced,
)
from sparring.graphs.registry import (
    BUILTIN,
    ENTRY_POINTS,
    GraphError,
    GraphSpec,
    build_graph,
    check_roles,
    graph_names,
    is_path,
    langgraph_spec,
    list_graphs,
    load_graph,
    load_run_config,
    register_graph,
)

__all__ = [
    "BUILTIN",
    "ENTRY_POINTS",
    "CoreContext",
    "CoreState",
    "GraphError",
    "GraphSpec",
    "Traced",
    "Update",
    "binding_of",
    "build_graph",
    "check_roles",
    "extend",
    "graph_names",
    "is_path",
    "langgraph_spec",
    "list_graphs",
    "load_graph",
    "load_run_config",
    "model_ref",
    "node",
    "register_graph",
    "trace",
    "traced",
]
