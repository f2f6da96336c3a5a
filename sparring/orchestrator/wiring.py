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
from sparring.agents.planner import Planner
from sparring.agents.prompts import PromptSource, load_prompt_set, load_seeds
from sparring.bus import Bus
from sparring.config import RunConfig
from sparring.eval.attacker_gate import AttackerGate
from sparring.eval.canary import CanaryGate, canary_items
from sparring.eval.judges import critique_only, panel_judge
from sparring.eval.planner_gate import PlannerGate
from sparring.graphs import CoreContext, load_graph
from sparring.graphs.nodes import critic_for, intent_judge_for
from sparring.graphs.redteam import make_attacker
from sparring.orchestrator.attacker_feed import default_embedder
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


def served_roles(cfg: RunConfig) -> list[str]:
    """The trained roles whose versions this run serves (hot-swaps in): each
    one in trainer.roles that the run's graph calls."""
    return [r for r in cfg.trainer.roles if r in cfg.roles]


def make_swapper(
    cfg: RunConfig,
    bus: Bus,
    registry: Registry,
    chat: OpenAIChat,
    tracer: Tracer,
    bindings: dict[str, Binding],
    admin_http: httpx.AsyncClient,
    consumer: str,
) -> Swapper:
    """The swapper that loads each trained role's new versions on that role's
    engine(s) and, after the role's gate (when ``promotion.gate``: the canary
    for the learner, the attacker gate for the attacker, the planner gate for
    the planner), flips the role to it.
    ``bindings``: every role's base binding."""
    roles = served_roles(cfg)
    serving = {}
    for role in roles:
        engine = cfg.engines[cfg.roles[role].engine]
        loader = make_loader(engine, admin_http, bindings[role].model)
        serving[role] = RoleServing(loader, list(engine.replicas))
    gates = {}
    if cfg.promotion.gate:
        gates["learner"] = make_gate(cfg, chat, registry, bus, tracer)
        if "attacker" in roles:
            gates["attacker"] = make_attacker_gate(cfg, chat, registry, bus, tracer, bindings)
        if "planner" in roles:
            gates["planner"] = make_planner_gate(cfg, chat, registry, bus, tracer, bindings)
    return Swapper(
        bus,
        registry,
        chat,
        tracer.log,
        group="swapper",
        consumer=consumer,
        serving=serving,
        keep_versions=cfg.swap.keep_versions,
        unload_after_s=cfg.swap.unload_after_s,
        temperature={role: sampling_temperature(cfg, role) for role in roles},
        gate=gates,
        served_roles=roles,
    )


def frozen_learner(cfg: RunConfig, bindings: dict[str, Binding]) -> Binding:
    """The learner's base (version 0), the frozen opponent of every version an
    attacker or planner gate measures: on the canary's engine when there is one."""
    frozen = bindings["learner"]
    if cfg.promotion.engine:
        url = cfg.engines[cfg.promotion.engine].url()
        frozen = Binding(frozen.role, url, frozen.model, 0)
    return frozen


def make_attacker_gate(
    cfg: RunConfig,
    chat: OpenAIChat,
    registry: Registry,
    bus: Bus,
    tracer: Tracer,
    bindings: dict[str, Binding],
) -> Any:
    """The attacker gate: fixed probes, written at the attacker's temperature,
    answered greedily by the learner's base model (on the canary's engine when
    there is one), judged by the loop's first critic on its current binding."""

    rc, p = cfg.roles, cfg.promotion
    seeds = load_seeds()[: p.attacker.seeds]
    frozen = frozen_learner(cfg, bindings)
    learner = Learner(chat, temperature=0.0, max_tokens=rc["learner"].max_tokens)
    critic_roles = [r for r in cfg.loop.critics if r in rc]
    critic = critic_for(cfg, chat, critic_roles[0]) if critic_roles else None
    intent_role = cfg.loop.intent_judge
    check = intent_judge_for(cfg, chat)

    def new_attacker() -> Any:  # the loop's attacker, fresh for each measurement
        return make_attacker(cfg, chat, seeds, None)

    async def answer(query: str) -> str:
        return (await learner.respond(frozen, query)).text

    async def judge(query: str, text: str) -> Any:
        assert critic is not None
        return (await critic(registry.binding(critic_roles[0]), query, text)).critique

    async def intent(query: str) -> Any:
        assert check is not None and intent_role is not None
        return (await check(registry.binding(intent_role), query)).intent

    return AttackerGate(
        seeds,
        new_attacker,
        answer,
        judge if critic is not None else None,
        default_embedder(),
        p.attacker.tolerance,
        bus,
        tracer.log,
        samples=p.attacker.samples,
        # look-alike probes when the loop's attacker writes look-alikes (and
        # an intent judge certifies them harmless): the gate measures what it trains
        modes=("attack", "lookalike") if cfg.loop.attacker_lookalikes else ("attack",),
        concurrency=max(1, min(cfg.loop.concurrency, 8)),
        intent=intent if check is not None else None,
    )


def make_planner_gate(
    cfg: RunConfig,
    chat: OpenAIChat,
    registry: Registry,
    bus: Bus,
    tracer: Tracer,
    bindings: dict[str, Binding],
) -> Any:
    """The planner gate: the first shipped decompose tasks, planned by a planner
    built as the decompose graph builds it (its served temperature), solved
    greedily by the learner's base model (on the canary's engine when there is
    one), parts judged by the loop's critic(s) and wholes and direct answers by
    the verifier, each on its current binding."""

    rc, p = cfg.roles, cfg.promotion
    spec = load_graph("decompose")
    assert spec.prompt_set is not None
    items = load_prompt_set(None, spec.prompt_set, spec.prompt_fields)  # the shipped tasks
    frozen = frozen_learner(cfg, bindings)
    planner = Planner(
        chat,
        temperature=rc["planner"].temperature,
        max_tokens=rc["planner"].max_tokens,
        retries=cfg.loop.critic_retries,
    )
    critic_roles = [r for r in cfg.loop.critics if r in rc]
    critics = {r: critic_for(cfg, chat, r) for r in critic_roles}
    verifier = critic_for(cfg, chat, "verifier")
    assert critics and verifier is not None, "the decompose graph binds critic and verifier"

    async def judge(subtask: str, text: str) -> Any:
        calls = [(registry.binding(r), critique_only(critics[r])) for r in critic_roles]
        return await panel_judge(calls)(subtask, text)

    async def verify(task: str, text: str) -> Any:
        return (await verifier(registry.binding("verifier"), task, text)).critique

    return PlannerGate(
        [i.prompt for i in items][: p.planner.tasks],
        planner,
        Learner(chat, temperature=0.0, max_tokens=rc["learner"].max_tokens),
        frozen,
        judge,
        verify,
        p.planner.tolerance,
        bus,
        tracer.log,
        samples=p.planner.samples,
        max_parts=cfg.loop.max_subtasks,
        concurrency=max(1, min(cfg.loop.concurrency, 8)),
    )


def make_gate(
    cfg: RunConfig, chat: OpenAIChat, registry: Registry, bus: Bus, tracer: Tracer
) -> Any:
    """The canary gate: greedy learner answers, judged by the rule judge and
    (for competence) by the run's critic(s) on their current bindings."""

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
        canary_items(p.canary, p.canary_per_kind, p.canary_competence, p.canary_answers),
        answer,
        judge if critics else None,
        p.tolerance,
        bus,
        tracer.log,
        concurrency=max(1, min(cfg.loop.concurrency, 8)),
        reference=p.reference,
        conditions=tuple(p.conditions),
        max_tokens=p.max_tokens,
        discrimination_gain=p.discrimination_gain,
    )
