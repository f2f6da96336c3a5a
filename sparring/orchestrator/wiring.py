"""Agent wiring: the chat client, the registry, the core episode context (the
graph builds its own context, with its agents, from it), and the swapper with
its canary gate."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from sparring.agents import Binding, Learner, OpenAIChat
from sparring.agents.prompts import PromptSource, load_prompt_set
from sparring.bus import Bus
from sparring.config import RunConfig
from sparring.graphs import CoreContext, load_graph
from sparring.graphs.nodes import critic_for
from sparring.orchestrator.engines import sampling_temperature
from sparring.orchestrator.progress import Counters
from sparring.schemas import Episode, PreferencePair
from sparring.serving.engine import engine_keys
from sparring.serving.loaders import make_loader, model_name_for
from sparring.serving.registry import Registry, RoleServing, Swapper
from sparring.tracing import Tracer


def chat_client(cfg: RunConfig) -> OpenAIChat:
    """The one HTTP client every role's requests go through, with each role's timeout."""
    roles = cfg.roles
    return OpenAIChat(
        timeout_s=max(rc.timeout_s for rc in roles.values()),
        role_timeouts={role: rc.timeout_s for role, rc in roles.items()},
        api_keys=engine_keys(cfg),
    )


def make_registry(
    cfg: RunConfig, bus: Bus, bindings: dict[str, Binding], run_dir: Path
) -> Registry:
    """Role -> binding, following new learner versions for roles on ``latest``."""
    learner_engine = cfg.engines[cfg.roles["learner"].engine]
    return Registry(
        bus,
        bindings,
        frozenset(r for r, rc in cfg.roles.items() if rc.version == "latest"),
        pinned={r: rc.version for r, rc in cfg.roles.items() if isinstance(rc.version, int)},
        version_model=lambda n, path: model_name_for(
            learner_engine, bindings["learner"].model, "learner", n, path
        ),
        versions_dir=run_dir / "versions",
    )


def episode_recorder(counters: Counters) -> Callable[[Episode, list[PreferencePair]], None]:
    """What runs as each episode lands: the counts (a graph's context may add to it)."""

    def on_episode(episode: Episode, pairs: list[PreferencePair]) -> None:
        counters.add(episode, pairs)

    return on_episode


def make_context(
    cfg: RunConfig,
    run_id: str,
    chat: OpenAIChat,
    registry: Registry,
    bus: Bus,
    tracer: Tracer,
    counters: Counters,
) -> CoreContext:
    """The core context every graph shares, then the graph's own built from it
    and the config (its agents and settings)."""
    spec = load_graph(cfg.loop.graph)
    rc, lc = cfg.roles["learner"], cfg.loop
    prompts = None
    if spec.prompt_set:
        items = load_prompt_set(lc.prompts, spec.prompt_set, spec.prompt_fields)
        prompts = PromptSource(items, str(lc.prompts or spec.prompt_set), random.Random(lc.seed))
    core = CoreContext(
        run_id=run_id,
        graph=spec.name,
        chat=chat,
        registry=registry,
        bus=bus,
        log=tracer.log,
        learner=Learner(chat, temperature=rc.temperature, max_tokens=rc.max_tokens),
        on_episode=episode_recorder(counters),
        pair_counts=counters.pair_kinds,
        prompts=prompts,
    )
    return spec.make_context(cfg, core)


def make_swapper(
    cfg: RunConfig,
    bus: Bus,
    registry: Registry,
    chat: OpenAIChat,
    tracer: Tracer,
    base: Binding,
    admin_http: httpx.AsyncClient,
    consumer: str,
) -> Swapper:
    """The swapper that loads each new learner version on its engine(s) and,
    after the gate (when ``promotion.gate``), flips the learner to it.
    ``base``: the learner's base binding."""
    learner_engine = cfg.engines[cfg.roles["learner"].engine]
    return Swapper(
        bus,
        registry,
        chat,
        tracer.log,
        group="swapper",
        consumer=consumer,
        serving={
            "learner": RoleServing(
                make_loader(learner_engine, admin_http, base.model), list(learner_engine.replicas)
            )
        },
        keep_versions=cfg.swap.keep_versions,
        unload_after_s=cfg.swap.unload_after_s,
        temperature=sampling_temperature(cfg, "learner"),
        gate=make_gate(cfg, chat, registry, bus, tracer) if cfg.promotion.gate else None,
        served_roles=["learner"],
    )


def make_gate(
    cfg: RunConfig, chat: OpenAIChat, registry: Registry, bus: Bus, tracer: Tracer
) -> Any:
    """The canary gate: greedy learner answers, judged by the rule judge and
    (for competence) by the run's critic(s) on their current bindings."""
    from sparring.eval.canary import CanaryGate, canary_items
    from sparring.eval.judges import critique_only, panel_judge

    rc, p = cfg.roles, cfg.promotion
    learners: dict[str, Learner] = {
        c: Learner(chat, temperature=0.0, max_tokens=rc["learner"].max_tokens, system=c)
        for c in ("served", *p.conditions)
    }
    # competence is judged by the loop's critic(s), else the verifier; a
    # graph with neither (debate) is gated on the rule judge's figures only
    critic_roles = [r for r in cfg.loop.critics if r in rc] or [r for r in ("verifier",) if r in rc]
    critics = {r: critic_for(cfg, chat, r) for r in critic_roles}

    # a batching engine of its own measures one version at a time (see PromotionConfig)
    canary_url = cfg.engines[p.engine].url() if p.engine else None

    async def answer(binding: Binding, prompt: str, system: str, max_tokens: int | None) -> str:
        if canary_url is not None:
            binding = Binding(binding.role, canary_url, binding.model, binding.version)
        return (await learners[system].respond(binding, prompt, max_tokens=max_tokens)).text

    async def judge(prompt: str, text: str) -> Any:
        calls = [(registry.binding(r), critique_only(critics[r])) for r in critic_roles]
        return await panel_judge(calls)(prompt, text)

    return CanaryGate(
        canary_items(p.canary, p.canary_per_kind, p.canary_competence),
        answer,
        judge if critics else None,
        p.tolerance,
        bus,
        tracer.log,
        concurrency=max(1, min(cfg.loop.concurrency, 8)),
        reference=p.reference,
        conditions=tuple(p.conditions),
        max_tokens=p.max_tokens,
    )
