"""The graph-authoring API: what a graph module (built-in or your own) imports.

- :class:`CoreState` / :class:`CoreContext`: the episode state and the runtime
  context every graph shares; a graph subclasses them for its own keys and fields.
- :func:`node`: a node that is timed, traced (one ``node`` event) and recorded
  in ``visited``; it returns its update, or :func:`traced` of it to say who spoke.
- :func:`register_graph`: names a build function, the roles it calls and the
  context it needs (see :mod:`sparring.graphs.registry`).
- :func:`binding_of`, :func:`model_ref`, :func:`trace`: the helpers nodes use.
"""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, TypedDict, TypeVar, cast

from langgraph.runtime import Runtime

from sparring.agents import Learner
from sparring.agents.prompts import PromptSource
from sparring.bus import Bus
from sparring.llm import Binding, Completion, OpenAIChat
from sparring.schemas import Episode, ModelRef, PreferencePair
from sparring.serving.registry import Registry


class CoreState(TypedDict, total=False):
    """The keys every graph shares: what the episode record is built from."""

    episode_id: str
    started_at: float
    round: int  # refinement rounds (self_refine) or debate turns done
    category: str
    query: str
    item: dict[str, str]  # the drawn prompt's further columns (debate: answer, wrong_answer)
    attacker: dict[str, Any]  # who wrote the query (a dataset for graphs without an attacker)
    learner: dict[str, Any]  # the learner binding the episode is pinned to
    answer: str
    messages: list[dict[str, str]]  # the learner's request for its plain answer
    critique: dict[str, Any]
    refined_answer: str
    refined_critique: dict[str, Any]
    outcome: str
    pair_ids: list[str]
    visited: Annotated[list[str], operator.add]


@dataclass
class CoreContext:
    """What every graph's nodes and the orchestrator use: the run's ids, the
    role registry, the bus, the trace logger, the learner and the counters."""

    run_id: str
    graph: str
    chat: OpenAIChat  # the one HTTP client: a graph's context builds its agents on it
    registry: Registry
    bus: Bus
    log: Any
    learner: Learner
    on_episode: Callable[[Episode, list[PreferencePair]], None] | None = None
    # the run's pair counts by kind (kept by the orchestrator)
    pair_counts: dict[str, int] = field(default_factory=dict)
    # graphs without an attacker draw their prompts from here
    prompts: PromptSource | None = None


C = TypeVar("C", bound=CoreContext)


def extend(core: CoreContext, cls: type[C], **more: Any) -> C:
    """``cls`` (a subclass of :class:`CoreContext`) holding ``core``'s fields and ``more``."""
    return cls(**{f.name: getattr(core, f.name) for f in fields(core)}, **more)


def binding_of(ref: Mapping[str, Any]) -> Binding:
    """The binding a state entry (``state["learner"]``) records."""
    return Binding(ref["role"], ref["base_url"], ref["model"], ref["version"])


def model_ref(binding: Binding) -> ModelRef:
    return ModelRef(role=binding.role, model=binding.model, version=binding.version)


def trace(
    runtime: Runtime[Any],
    state: Mapping[str, Any],
    node: str,
    binding: Binding | None,
    calls: Sequence[Completion],
    started: float,
    **fields: Any,
) -> None:
    """One ``node`` trace event (the :func:`node` decorator writes a node's own;
    call this for a second event inside a node)."""
    # Every event names the learner version the episode is pinned to, so traces
    # filter by version whichever role spoke.
    if "learner_version" not in fields and state.get("learner"):
        fields["learner_version"] = state["learner"]["version"]
    runtime.context.log.info(
        "node",
        node=node,
        episode_id=state["episode_id"],
        role=binding.role if binding else None,
        model=binding.model if binding else None,
        version=binding.version if binding else None,
        latency_s=round(time.perf_counter() - started, 4),
        model_latency_s=round(sum(c.latency_s for c in calls), 4),
        calls=len(calls),
        prompt_tokens=sum(c.prompt_tokens for c in calls),
        completion_tokens=sum(c.completion_tokens for c in calls),
        **fields,
    )


@dataclass
class Traced:
    """A node's update and what its trace event says: who answered, the model
    calls, further fields; ``name`` when the event is named otherwise than the node."""

    update: dict[str, Any]
    binding: Binding | None = None
    calls: Sequence[Completion] = ()
    fields: dict[str, Any] = field(default_factory=dict)
    name: str | None = None


def traced(
    update: Mapping[str, Any],
    binding: Binding | None = None,
    calls: Sequence[Completion] = (),
    **fields: Any,
) -> Traced:
    """Return this from a :func:`node` to have its event written."""
    return Traced(dict(update), binding, calls, fields)


Update = Mapping[str, Any] | Traced
F = TypeVar("F", bound=Callable[..., Awaitable[Update]])


def node(name: str) -> Callable[[F], F]:
    """A graph node ``(state, runtime)``: timed, appended to ``visited``, and, when
    it returns :func:`traced`, one trace event (a plain update writes none)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        async def run(state: Any, runtime: Any) -> dict[str, Any]:
            started = time.perf_counter()
            out = await fn(state, runtime)
            if not isinstance(out, Traced):
                return {**out, "visited": [name]}
            event = out.name or name
            trace(runtime, state, event, out.binding, out.calls, started, **out.fields)
            return {**out.update, "visited": [event]}

        run.__name__ = name
        return cast(F, run)

    return wrap
