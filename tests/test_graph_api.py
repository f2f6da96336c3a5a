"""The graph-authoring API: the node decorator, registration by decorator and by
a package's entry point, and the role check that now lives beside the registry."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from sparring.agents import Binding
from sparring.cli import main
from sparring.config import ConfigError, load_config
from sparring.graphs import check_roles, graph_names, load_graph, node, traced


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


def test_a_node_is_timed_traced_and_visited() -> None:
    log = Log()
    runtime = SimpleNamespace(context=SimpleNamespace(log=log))
    state = {"episode_id": "e1", "learner": {"version": 3}}

    @node("hello")
    async def hello(state: Any, runtime: Any) -> Any:
        return traced({"answer": "hi"}, Binding("learner", "http://x", "m", 3), [], output="hi")

    @node("quiet")
    async def quiet(state: Any, runtime: Any) -> Any:
        return {}

    assert asyncio.run(hello(state, runtime)) == {"answer": "hi", "visited": ["hello"]}
    assert asyncio.run(quiet(state, runtime)) == {"visited": ["quiet"]}
    ((event, fields),) = log.events  # a plain update writes no event
    assert event == "node" and fields["node"] == "hello" and fields["episode_id"] == "e1"
    assert (fields["role"], fields["model"], fields["version"]) == ("learner", "m", 3)
    assert fields["learner_version"] == 3 and fields["output"] == "hi"
    assert fields["latency_s"] >= 0 and fields["calls"] == 0


PACKAGE_GRAPH = '''
"""Acme's loop: draw, answer, judge, emit."""
from langgraph.graph import END, START, StateGraph

from sparring.graphs import CoreState, register_graph
from sparring.graphs.nodes import CritiqueContext, context, critique, draw, emit, respond


@register_graph("acme_loop", roles=("learner", "critic"), context=context,
                prompt_set="prompt_set.jsonl")
def build(checkpointer=None):
    g = StateGraph(CoreState, context_schema=CritiqueContext)
    for name, fn in [("draw", draw), ("respond", respond), ("critique", critique),
                     ("emit", emit)]:
        g.add_node(name, fn)
    g.add_edge(START, "draw")
    g.add_edge("draw", "respond")
    g.add_edge("respond", "critique")
    g.add_edge("critique", "emit")
    g.add_edge("emit", END)
    return g.compile(checkpointer=checkpointer)
'''


def test_a_package_ships_a_graph_through_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "acme_graphs.py").write_text(PACKAGE_GRAPH)
    info = tmp_path / "acme_graphs-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-graphs\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sparring.graphs]\nacme_loop = acme_graphs\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert graph_names()[-1] == "acme_loop"
    spec = load_graph("acme_loop")
    assert (
        spec.roles == ("learner", "critic")
        and spec.description == "Acme's loop: draw, answer, judge, emit."
    )
    assert "draw --> respond" in spec.build(None).get_graph().draw_mermaid()
    listed = CliRunner().invoke(main, ["graph", "list"], terminal_width=200)
    assert listed.exit_code == 0 and "acme_loop" in listed.output
    cfg = load_config(None, {"loop.graph": "acme_loop"})
    check_roles(cfg, "<test>")  # its roles are bound by the defaults


def test_the_role_check_is_the_graphs_not_the_configs(tmp_path: Path) -> None:
    """load_config reads and validates the schema; the graph's roles are checked
    by sparring.graphs.check_roles (which `sparring run` and check-config call)."""
    p = tmp_path / "run.yaml"
    p.write_text(textwrap.dedent("loop: {graph: redteem}\n"))
    cfg = load_config(p)
    with pytest.raises(ConfigError, match=r"run.yaml: loop.graph: unknown graph 'redteem'"):
        check_roles(cfg, p)
    checked = CliRunner().invoke(main, ["check-config", str(p)])
    assert checked.exit_code == 1 and "unknown graph 'redteem'" in checked.output
