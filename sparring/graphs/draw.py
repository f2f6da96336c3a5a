"""Graph pictures without a network: Graphviz DOT from LangGraph's graph, drawn by `dot`.

(LangGraph's own PNG paths call a web service or need pygraphviz / a browser.)
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any


def to_dot(graph: Any, title: str = "") -> str:
    """DOT text: boxes for nodes, ovals for start/end, dashed conditional edges."""
    lines = [
        "digraph G {",
        f'  graph [rankdir=TB, fontname="Helvetica", labelloc=t, label="{_esc(title)}"];',
        '  node [shape=box, style="rounded,filled", fillcolor="#f2f0ff", fontname="Helvetica"];',
    ]
    for node_id in graph.nodes:
        if node_id in ("__start__", "__end__"):
            label = "start" if node_id == "__start__" else "end"
            lines.append(f'  "{node_id}" [label="{label}", shape=oval, fillcolor="#bfb6fc"];')
        else:
            lines.append(f'  "{_esc(node_id)}";')
    for e in graph.edges:
        style = ' [style=dashed, label="?"]' if e.conditional else ""
        lines.append(f'  "{_esc(e.source)}" -> "{_esc(e.target)}"{style};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def draw_png(graph: Any, out: Path, title: str = "") -> Path:
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError(
            "graphviz's `dot` is not installed; run scripts/setup.sh (or apt-get install "
            "graphviz), or paste the Mermaid text into any Mermaid viewer"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [dot, "-Tpng", "-Gdpi=110", "-o", str(out)],
        input=to_dot(graph, title),
        text=True,
        check=True,
        capture_output=True,
    )
    return out
