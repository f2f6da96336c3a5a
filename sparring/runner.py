"""The main job: engines up, trainer in the background, episodes until the budget."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sparring.agents import Attacker, Binding, Learner, OpenAIChat, make_critic
from sparring.agents.debate import Debater, make_judge
from sparring.agents.difficulty import DifficultyController
from sparring.agents.planner import Planner
from sparring.agents.prompts import (
    PromptItem,
    PromptSource,
    Seed,
    load_prompt_set,
    load_seeds,
)
from sparring.bus import Bus, Delivery, make_bus
from sparring.config import ConfigError, EngineConfig, RunConfig
from sparring.graphs import build_graph, load_graph
from sparring.graphs.nodes import LoopContext
from sparring.redact import for_disk, secret_env
from sparring.schemas import Episode, PreferencePair
from sparring.serving.engine import EngineProcess, engine_keys, thread_env, wait_for_engine
from sparring.serving.loaders import adapter_name, load_role_adapters, make_loader, model_name_for
from sparring.serving.models import ModelFolderError, resolve_model_path
from sparring.serving.registry import Registry, RoleServing, Swapper, warm
from sparring.summary import VersionRow, as_json, render_table, summarise
from sparring.tracing import Tracer
from sparring.workqueue import WorkQueue

# A trainer that dies is restarted (it resumes from the bus) at most this often.
MAX_TRAINER_RESTARTS = 3
TRAINER_CHECK_S = 1.0
RETRY_BACKOFF_S = 5.0  # a failed episode's first wait; doubled per attempt
REVIEW_READ = 16  # new reviews read per poll, beyond those held
REVIEW_PRUNE_S = 60.0  # how often held reviews of finished episodes are dropped
# This orchestrator's name in the bus's consumer groups; replicas sharing a
# Redis need distinct names (docker compose: the container's hostname).
DEFAULT_CONSUMER = "local"


@dataclass
class Counters:
    episodes: int = 0
    pairs: int = 0
    judge_errors: int = 0
    by_version: dict[int, int] = field(default_factory=dict)
    pair_kinds: dict[str, int] = field(default_factory=dict)

    def add(self, episode: Episode, pairs: list[PreferencePair]) -> None:
        self.episodes += 1
        self.pairs += len(pairs)
        self.judge_errors += episode.outcome == "judge_error"
        v = episode.learner.version
        self.by_version[v] = self.by_version.get(v, 0) + 1
        for p in pairs:
            self.pair_kinds[p.kind] = self.pair_kinds.get(p.kind, 0) + 1


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def open_bus(cfg: RunConfig, run_dir: Path) -> Bus:
    return make_bus(
        cfg.bus.redis_url, cfg.bus.sqlite_path or run_dir / "bus.sqlite", namespace=run_dir.name
    )


def served_model(cfg: RunConfig, name: str, model_paths: dict[str, Path]) -> str:
    """What requests name to reach base model ``name``: its served name, else its
    local folder (transformers serve loads folders by path), else its hub id."""
    src = cfg.models[name]
    if src.served_name:
        return src.served_name
    if name in model_paths:
        return str(model_paths[name])
    return str(src.hub_id or src.path)


def role_model(cfg: RunConfig, role: str, model_paths: dict[str, Path]) -> str:
    """What ``role``'s requests name: its adapter (roles.X.adapter), else its base model."""
    rc = cfg.roles[role]
    return adapter_name(role) if rc.adapter else served_model(cfg, rc.model, model_paths)


def base_bindings(cfg: RunConfig, model_paths: dict[str, Path]) -> dict[str, Binding]:
    return {
        role: Binding(role, cfg.engines[rc.engine].url(), role_model(cfg, role, model_paths))
        for role, rc in cfg.roles.items()
    }


def engine_process(
    cfg: RunConfig, name: str, model_paths: dict[str, Path], log_path: Path,
    engine: EngineConfig | None = None,
) -> EngineProcess:  # fmt: skip
    """The process for managed engine ``name`` (``engine``: its config, when it
    differs from ``cfg``'s, e.g. on another port). A vllm engine serves the one
    base model its roles bind, under the name requests use for it."""
    ec = engine or cfg.engines[name]
    if ec.kind != "vllm":
        return EngineProcess(name, ec, log_path)
    model = next(rc.model for rc in cfg.roles.values() if rc.engine == name)
    src = cfg.models[model]
    weights = str(model_paths[model]) if model in model_paths else str(src.hub_id or src.path)
    return EngineProcess(name, ec, log_path, model=weights,
                         served_name=served_model(cfg, model, model_paths))  # fmt: skip


def local_models(cfg: RunConfig) -> dict[str, Path]:
    """Folders of the models that must be on this machine: those an engine
    sparring starts serves, and the learner's base when the trainer runs here.
    Models only a remote engine serves (vLLM in docker compose) are named, not
    loaded, so the orchestrator needs neither their weights nor torch."""
    needed = {rc.model for rc in cfg.roles.values() if cfg.engines[rc.engine].managed}
    if cfg.trainer.managed:
        needed.add(cfg.roles["learner"].model)
    out = {}
    for name, src in cfg.models.items():
        if src.hub_id is not None:
            continue
        if name in needed or (src.builtin is None and src.served_name is None):
            try:
                out[name] = resolve_model_path(src.builtin, src.path)
            except ModelFolderError as err:
                raise ConfigError(f"models.{name}.path: {err}") from None
    return out


def lookalike_items(path: Path | None, seeds: list[Seed]) -> list[PromptItem]:
    """The look-alike prompts drawn as written: a user's file, or the seeds'
    look-alikes (by category) and the shipped benign set."""
    if path is not None:
        return load_prompt_set(path)
    shipped = load_prompt_set(None, "benign_set.jsonl")
    return [PromptItem(s.category, q) for s in seeds for q in s.lookalikes] + shipped


class TrainerProcess:
    """``sparring train`` as a background process whose JSON log is trainer.log."""

    def __init__(
        self, run_dir: Path, config_path: Path, threads: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """``env``: added to its environment (the secrets config.yaml masks)."""
        self.log_path = run_dir / "trainer.log"
        self._env = {**os.environ, **thread_env(threads), **(env or {})}
        self._cmd = [
            sys.executable, "-m", "sparring.training.worker",
            "--run-dir", str(run_dir), "--config", str(config_path),
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._env,
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as an OOM killer or a pulled plug would (used by the crash tests)."""
        if self.alive():
            assert self._proc is not None
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        if not self.alive():
            return
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()


class Loop:
    """One run: owns its engines, bus, trainer, swapper and episode tasks."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        *,
        run_id: str | None = None,
        console: Console | None = None,
        progress: bool = True,
        trace_stdout: bool = False,
        consumer: str = DEFAULT_CONSUMER,
    ) -> None:
        self.cfg = cfg
        self.consumer = consumer
        self.run_dir = run_dir
        self.run_id = run_id or run_dir.name
        self.console = console or Console(stderr=True)
        self.progress_enabled = progress
        self.trace_stdout = trace_stdout
        self.counters = Counters()
        self.started = time.monotonic()
        self.trainer: TrainerProcess | None = None
        self.trainer_restarts = 0
        self.rows: list[VersionRow] = []
        # episodes paused for a person's verdict, and reviews read for them
        self.paused: set[str] = set()
        self.resuming: set[str] = set()
        self.reviews: dict[str, Delivery] = {}
        # episodes that raised: attempts so far, and when the next may start
        self.failures: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}
        self.review_retry_at: dict[str, float] = {}  # paused ones whose resume raised

    # -- set-up -------------------------------------------------------------
    def prepare(self) -> dict[str, Path]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        paths = local_models(self.cfg)
        # on a volume others mount (the engine's): secrets masked or as ${VAR}
        resolved = for_disk(self.cfg)
        for name, src in self.cfg.models.items():
            # The trainer re-reads this file: name the folder the pull produced.
            one = src.model_dump(mode="json", exclude_none=True)
            if name in paths:
                one = {k: v for k, v in one.items() if k not in ("builtin", "path")}
                one["path"] = str(paths[name])
            resolved["models"][name] = one
        self.config_path = self.run_dir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(resolved, sort_keys=False))
        return paths

    def budget_reached(self, registry: Registry) -> str | None:
        b = self.cfg.budget
        if b.episodes is not None and self.counters.episodes >= b.episodes:
            return f"{b.episodes} episodes"
        if b.minutes is not None and time.monotonic() - self.started >= b.minutes * 60:
            return f"{b.minutes:g} minutes"
        if b.learner_versions is not None:
            # Stop once the target version (or a later one: the trainer keeps
            # going meanwhile) has also served a round of episodes.
            served = sum(n for v, n in self.counters.by_version.items() if v >= b.learner_versions)
            if served >= max(self.cfg.loop.concurrency, 4):
                return f"{b.learner_versions} learner versions"
        return None

    def _engine_used(self, name: str) -> bool:
        """A role is bound to it, or the canary gate answers on it."""
        gate = self.cfg.promotion.gate and self.cfg.promotion.engine == name
        return gate or any(rc.engine == name for rc in self.cfg.roles.values())

    def _sampling_temperature(self, role: str) -> float:
        return self.cfg.engines[self.cfg.roles[role].engine].sampling_temperature

    # -- the run --------------------------------------------------------------
    async def run(self) -> list[VersionRow]:
        paths = self.prepare()
        engines = [
            engine_process(self.cfg, name, paths, self.run_dir / f"engine-{name}.log")
            for name, ec in self.cfg.engines.items()
            if ec.managed and self._engine_used(name)
        ]
        trainer = self.trainer = TrainerProcess(
            self.run_dir, self.config_path, self.cfg.trainer.threads, env=secret_env(self.cfg)
        )
        tracer = Tracer(self.run_dir, self.run_id, stdout=self.trace_stdout)
        bus = open_bus(self.cfg, self.run_dir)
        roles = self.cfg.roles
        chat = OpenAIChat(
            timeout_s=max(rc.timeout_s for rc in roles.values()),
            role_timeouts={role: rc.timeout_s for role, rc in roles.items()},
            api_keys=engine_keys(self.cfg),
        )
        try:
            for engine in engines:
                with self.console.status(f"starting engine '{engine.name}' ({engine.cfg.kind})"):
                    engine.start()
                tracer.log.info("engine.started", engine=engine.name, pid=engine.pid)
            for name, ec in self.cfg.engines.items():
                if not ec.managed:
                    with self.console.status(f"waiting for engine '{name}' at {ec.url()}"):
                        await wait_for_engine(name, ec)
            with self.console.status("loading the roles' adapters"):
                await load_role_adapters(self.cfg, self.cfg.roles)
            bindings = base_bindings(self.cfg, paths)
            with self.console.status("loading base models into the engine"):
                for role, b in {
                    (b.base_url, b.model): (r, b) for r, b in bindings.items()
                }.values():
                    await warm(chat, b, temperature=self._sampling_temperature(role))
            if self.cfg.trainer.managed:
                trainer.start()
                tracer.log.info("trainer.started", log=str(trainer.log_path))
            await self._episodes(bus, chat, bindings, tracer)
        finally:
            trainer.stop()
            await chat.aclose()
            for engine in engines:
                engine.stop()
            rows = self.rows = summarise(bus)
            (self.run_dir / "summary.json").write_text(json.dumps(as_json(rows), indent=2))
            tracer.log.info("run.finished", episodes=self.counters.episodes)
            tracer.close()
            bus.close()
        return rows

    async def _episodes(
        self, bus: Bus, chat: OpenAIChat, bindings: dict[str, Binding], tracer: Tracer
    ) -> None:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        cfg = self.cfg
        learner_engine = cfg.engines[cfg.roles["learner"].engine]
        registry = Registry(
            bus, bindings,
            frozenset(r for r, rc in cfg.roles.items() if rc.version == "latest"),
            pinned={r: rc.version for r, rc in cfg.roles.items() if isinstance(rc.version, int)},
            version_model=lambda n, path: model_name_for(
                learner_engine, bindings["learner"].model, "learner", n, path
            ),
            versions_dir=self.run_dir / "versions",
        )  # fmt: skip
        rc = cfg.roles
        dc = cfg.loop.attacker_difficulty
        difficulty = DifficultyController(
            levels=dc.levels, start=dc.start_level, low=dc.target_low, high=dc.target_high,
            window=dc.window, min_outcomes=dc.min_outcomes,
        ) if dc.adapt and "attacker" in rc else None  # fmt: skip
        # one seed list: the attacker rewrites from it, and seed replays send it as written
        seeds = load_seeds()
        attacker = (
            Attacker(
                chat, seeds, temperature=rc["attacker"].temperature,
                max_tokens=rc["attacker"].max_tokens,
                recent_window=cfg.loop.attacker_recent_window, rng=random.Random(cfg.loop.seed),
                difficulty=difficulty,
            )
            if "attacker" in rc
            else None
        )  # fmt: skip

        def on_episode(episode: Episode, pairs: list[PreferencePair]) -> None:
            self.counters.add(episode, pairs)
            if difficulty is not None and episode.attack_level is not None:
                move = difficulty.record(episode.outcome, episode.attack_level)
                if move:
                    tracer.log.info("attacker.difficulty", **move.as_dict())

        spec = load_graph(cfg.loop.graph)
        prompt_set = cfg.loop.prompts

        ctx = LoopContext(
            run_id=self.run_id,
            attacker=attacker,
            learner=Learner(
                chat, temperature=rc["learner"].temperature, max_tokens=rc["learner"].max_tokens
            ),
            critic=self._critic(chat, "critic"),
            registry=registry, bus=bus, log=tracer.log, pair_margin=cfg.loop.pair_margin,
            on_episode=on_episode,
            prompts=PromptSource(
                load_prompt_set(prompt_set, spec.prompt_set, spec.prompt_fields),
                str(prompt_set or spec.prompt_set), random.Random(cfg.loop.seed),
            ) if spec.prompt_set else None,
            max_rounds=cfg.loop.max_rounds,
            satisfied_helpfulness=cfg.loop.satisfied_helpfulness,
            review_below_confidence=cfg.loop.review_below_confidence,
            review_judge_errors=cfg.loop.review_judge_errors,
            review_disagreement=cfg.loop.review_disagreement,
            critics=tuple(cfg.loop.critics),
            human_pair_weight=cfg.loop.human_pair_weight,
            graph=spec.name,
            debaters={
                role: Debater(chat, temperature=rc[role].temperature,
                              max_tokens=rc[role].max_tokens)
                for role in ("learner", "sneaky") if role in rc
            },
            judge=make_judge(
                chat, temperature=rc["judge"].temperature, max_tokens=rc["judge"].max_tokens,
                retries=cfg.loop.critic_retries,
            ) if "judge" in rc else None,
            debate_turns=cfg.loop.debate_turns,
            debate_require_truth=cfg.loop.debate_pairs == "truth",
            planner=Planner(
                chat, temperature=rc["planner"].temperature,
                max_tokens=rc["planner"].max_tokens, retries=cfg.loop.critic_retries,
            ) if "planner" in rc else None,
            verifier=self._critic(chat, "verifier"),
            max_subtasks=cfg.loop.max_subtasks,
            contrast=cfg.loop.contrast,
            benign_share=cfg.loop.benign_share if attacker is not None else 0.0,
            benign=PromptSource(
                lookalike_items(cfg.loop.benign_prompts, seeds),
                str(cfg.loop.benign_prompts or "seeds.yaml lookalikes + benign_set.jsonl"),
                random.Random(cfg.loop.seed + 1),
            ) if attacker is not None and cfg.loop.benign_share > 0 else None,
            balance_share=cfg.loop.balance_share,
            pair_counts=self.counters.pair_kinds,
            attacker_lookalikes=cfg.loop.attacker_lookalikes,
            refine_rule_check=cfg.loop.refine_rule_check,
            seed_share=cfg.loop.seed_share if attacker is not None else 0.0,
            seeds=PromptSource(
                [PromptItem(s.category, ex) for s in seeds for ex in s.examples],
                "seeds.yaml", random.Random(cfg.loop.seed + 2),
            ) if attacker is not None and cfg.loop.seed_share > 0 else None,
        )  # fmt: skip
        stop = asyncio.Event()
        queue = WorkQueue(
            bus, self.run_id, self.consumer, limit=cfg.budget.episodes,
            claim_after_s=cfg.loop.task_claim_after_s,
        )  # fmt: skip
        async with AsyncExitStack() as stack:
            admin_http = await stack.enter_async_context(httpx.AsyncClient(timeout=600.0))
            swapper = Swapper(
                bus, registry, chat, tracer.log, group="swapper", consumer=self.consumer,
                serving={"learner": RoleServing(
                    make_loader(learner_engine, admin_http, bindings["learner"].model),
                    list(learner_engine.replicas),
                )},
                keep_versions=cfg.swap.keep_versions, unload_after_s=cfg.swap.unload_after_s,
                temperature=self._sampling_temperature("learner"),
                gate=self._gate(chat, registry, bus, tracer) if cfg.promotion.gate else None,
            )  # fmt: skip
            saver = await stack.enter_async_context(
                AsyncSqliteSaver.from_conn_string(str(self.run_dir / self._checkpoint_file()))
            )
            graph = build_graph(cfg.loop.graph, checkpointer=saver)
            swap_task = asyncio.create_task(swapper.run(stop))
            watch_task = asyncio.create_task(self._supervise_trainer(stop, tracer))
            review_task = asyncio.create_task(self._watch_reviews(graph, ctx, queue, bus, stop))
            try:
                await self._schedule(graph, ctx, registry, bus, queue, watch_task)
            finally:
                stop.set()
                await swap_task
                await review_task
                watch_task.cancel()

    def _critic(self, chat: OpenAIChat, role: str) -> Any:
        """The critic agent with ``role``'s sampling settings (None: not bound)."""
        cfg, rc = self.cfg, self.cfg.roles
        if role not in rc:
            return None
        return make_critic(
            chat, temperature=rc[role].temperature, max_tokens=rc[role].max_tokens,
            retries=cfg.loop.critic_retries, shots=cfg.loop.critic_shots,
        )  # fmt: skip

    def _gate(self, chat: OpenAIChat, registry: Registry, bus: Bus, tracer: Tracer) -> Any:
        """The canary gate: greedy learner answers, judged by the rule judge and
        (for competence) by the run's critic(s) on their current bindings."""
        from sparring.eval.canary import CanaryGate, canary_items
        from sparring.eval.judges import critique_only, panel_judge

        cfg, rc, p = self.cfg, self.cfg.roles, self.cfg.promotion
        learners: dict[str, Learner] = {
            c: Learner(chat, temperature=0.0, max_tokens=rc["learner"].max_tokens, system=c)
            for c in ("served", *p.conditions)
        }
        # competence is judged by the loop's critic(s), else the verifier; a
        # graph with neither (debate) is gated on the rule judge's figures only
        critic_roles = [r for r in cfg.loop.critics if r in rc] or [
            r for r in ("verifier",) if r in rc
        ]
        critics = {r: self._critic(chat, r) for r in critic_roles}

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
            canary_items(p.canary, p.canary_per_kind, p.canary_competence), answer,
            judge if critics else None, p.tolerance, bus, tracer.log,
            concurrency=max(1, min(cfg.loop.concurrency, 8)), reference=p.reference,
            conditions=tuple(p.conditions), max_tokens=p.max_tokens,
        )  # fmt: skip

    def _checkpoint_file(self) -> str:
        # One SQLite file per orchestrator: replicas may share the run directory.
        if self.consumer == DEFAULT_CONSUMER:
            return "checkpoints.sqlite"
        return f"checkpoints-{self.consumer}.sqlite"

    async def _supervise_trainer(self, stop: asyncio.Event, tracer: Tracer) -> None:
        """Restart a trainer that died (a crash, an OOM kill): it resumes from the bus.

        Gives up after ``MAX_TRAINER_RESTARTS`` deaths; the run then stops with
        an error that points at trainer.log.
        """
        trainer = self.trainer
        if trainer is None or not self.cfg.trainer.managed:
            return
        while not stop.is_set():
            await asyncio.sleep(TRAINER_CHECK_S)
            if stop.is_set() or trainer.alive():
                continue
            code = trainer.returncode
            if self.trainer_restarts >= MAX_TRAINER_RESTARTS:
                tracer.log.error("trainer.gave_up", exit_code=code, log=str(trainer.log_path))
                raise RuntimeError(
                    f"the trainer died {self.trainer_restarts + 1} times (last exit code "
                    f"{code}); see {trainer.log_path}"
                )
            self.trainer_restarts += 1
            tracer.log.warning("trainer.restarted", exit_code=code, restarts=self.trainer_restarts)
            trainer.start()

    async def _schedule(
        self, graph: Any, ctx: LoopContext, registry: Registry, bus: Bus, queue: WorkQueue,
        watch: asyncio.Task[None] | None = None,
    ) -> None:  # fmt: skip
        cfg = self.cfg
        sem = asyncio.Semaphore(cfg.loop.concurrency)
        tasks: dict[str, asyncio.Task[Any]] = {}
        with self._progress() as bar:
            ep_task = bar.add_task("episodes", total=cfg.budget.episodes, note="")
            pair_task = bar.add_task("pairs", total=None, note="")
            train_task = bar.add_task("training", total=cfg.trainer.pairs_per_version, note="")
            ver_task = bar.add_task("learner version", total=cfg.budget.learner_versions, note="")
            bars = (ep_task, pair_task, train_task, ver_task)
            while (reason := self.budget_reached(registry)) is None:
                if watch is not None and watch.done():
                    watch.result()  # re-raises why supervision ended (the trainer gave up)
                await sem.acquire()
                if reason := self.budget_reached(registry):
                    sem.release()
                    break
                held = set(tasks) | self.paused | self.cooling()
                episode_id = await asyncio.to_thread(queue.next, held)
                if episode_id is None:
                    sem.release()
                    if self.retry_at:  # all tasks exist; failed ones wait for a retry
                        await asyncio.sleep(0.5)
                        continue
                    reason = f"{cfg.budget.episodes} episodes"
                    break
                t = asyncio.create_task(self._one(graph, ctx, queue, episode_id, sem))
                tasks[episode_id] = t
                t.add_done_callback(_forget(tasks, episode_id))
                self._update(bar, bus, registry, *bars)
                await asyncio.sleep(0)
            ctx.log.info("run.budget_reached", reason=reason, in_flight=len(tasks))
            if reason.endswith("minutes") and tasks:
                # A time budget is a deadline: stop episodes still running (their
                # checkpoints and tasks stay, so a restart under the same run id
                # and consumer resumes them) rather than wait minutes for them.
                for t in tasks.values():
                    t.cancel()
                ctx.log.warning("run.cancelled_in_flight", episodes=len(tasks))
            review_deadline = time.monotonic() + cfg.loop.review_wait_s
            while tasks or self.resuming or (self.paused and time.monotonic() < review_deadline):
                if tasks:
                    await asyncio.wait(list(tasks.values()), timeout=0.5)
                else:
                    await asyncio.sleep(0.5)
                self._update(bar, bus, registry, *bars)
            if self.paused:
                ctx.log.warning("run.left_paused", episodes=sorted(self.paused))
            if self.failures:
                # unacked: a later run under this run id tries them again
                ctx.log.warning("run.left_retrying", episodes=sorted(self.failures))
            self._update(bar, bus, registry, *bars)

    async def _one(
        self, graph: Any, ctx: LoopContext, queue: WorkQueue, episode_id: str,
        sem: asyncio.Semaphore,
    ) -> None:  # fmt: skip
        config = {"configurable": {"thread_id": episode_id}}
        try:
            state: dict[str, Any] | None = {"episode_id": episode_id, "started_at": time.time()}
            snapshot = await graph.aget_state(config)
            if snapshot.interrupts:
                self._pause(ctx, episode_id, resumed=True)  # paused before a restart
                return
            if snapshot.values.get("outcome"):
                state = None  # finished before a restart; only the ack was missing
            elif snapshot.next:
                # Interrupted by a restart: resume from the last checkpoint, on the
                # learner version the episode started with.
                if learner := snapshot.values.get("learner"):
                    ctx.registry.hold(episode_id, "learner", learner["version"])
                ctx.log.info("episode.resumed", episode_id=episode_id, next=list(snapshot.next))
                state = None
                await graph.ainvoke(None, config=config, context=ctx)
            if state is not None:
                await graph.ainvoke(state, config=config, context=ctx)
            if (await graph.aget_state(config)).interrupts:
                self._pause(ctx, episode_id)  # its task stays unacked until it resumes
                return
            queue.done(episode_id)
            self.failures.pop(episode_id, None)
        except asyncio.CancelledError:
            pass  # the time budget ran out mid-episode (see run.cancelled_in_flight)
        except Exception as err:
            self._failed(ctx, queue, episode_id, err)
        finally:
            ctx.registry.release(episode_id)
            sem.release()

    def cooling(self) -> set[str]:
        """Failed episodes waiting for their next attempt (not handed out yet)."""
        now = time.monotonic()
        for episode_id in [e for e, t in self.retry_at.items() if t <= now]:
            del self.retry_at[episode_id]
        return set(self.retry_at)

    def _retry_in(
        self, ctx: LoopContext, episode_id: str, err: Exception, event: str
    ) -> float | None:
        """Count a failed attempt at ``episode_id``: seconds until the next one
        (5 s, 10 s, ... at most 300), or None once ``loop.episode_attempts`` are
        spent (then logged as episode.failed and forgotten)."""
        attempts = self.failures.pop(episode_id, 0) + 1
        if attempts >= self.cfg.loop.episode_attempts:
            ctx.log.error("episode.failed", episode_id=episode_id, attempts=attempts,
                          error=repr(err)[:500])  # fmt: skip
            return None
        self.failures[episode_id] = attempts
        delay = min(RETRY_BACKOFF_S * 2 ** (attempts - 1), 300.0)
        ctx.log.warning(event, episode_id=episode_id, attempt=attempts, in_s=delay,
                        error=repr(err)[:500])  # fmt: skip
        return delay

    def _failed(self, ctx: LoopContext, queue: WorkQueue, episode_id: str, err: Exception) -> None:
        """An episode raised: try it again later from its last checkpoint (its
        task stays unacked), or, after ``loop.episode_attempts``, give it up."""
        delay = self._retry_in(ctx, episode_id, err, "episode.retrying")
        if delay is None:
            queue.done(episode_id)
        else:
            self.retry_at[episode_id] = time.monotonic() + delay

    def _pause(self, ctx: LoopContext, episode_id: str, resumed: bool = False) -> None:
        self.paused.add(episode_id)
        ctx.log.info("episode.paused", episode_id=episode_id, after_restart=resumed)

    async def _watch_reviews(
        self, graph: Any, ctx: LoopContext, queue: WorkQueue, bus: Bus, stop: asyncio.Event,
        poll_s: float = 0.5,
    ) -> None:  # fmt: skip
        """Resume paused episodes as `sparring review` answers them. Each
        orchestrator reads every review in its own group and holds those of
        episodes it has not paused (another orchestrator's, or one it may claim
        later) until their episode is finished; it acks one only once the
        episode it resumed is on the bus, or given up."""
        group = f"reviews-{self.consumer}"
        pruned = time.monotonic()
        while not stop.is_set():
            # held reviews come back first: ask for enough to get past them
            count = len(self.reviews) + REVIEW_READ
            for d in await asyncio.to_thread(bus.read, "reviews", group, self.consumer, count):
                episode_id = d.payload.get("episode_id")
                if not isinstance(episode_id, str):
                    ctx.log.error("review.malformed", msg_id=d.msg_id, action="acked, skipped")
                    bus.ack("reviews", group, [d.msg_id])
                    continue
                self.reviews.setdefault(episode_id, d)
            if time.monotonic() - pruned > REVIEW_PRUNE_S:
                pruned = time.monotonic()
                await asyncio.to_thread(self._drop_finished_reviews, bus, group)
            now = time.monotonic()
            for episode_id in sorted(self.paused & set(self.reviews)):
                if self.review_retry_at.get(episode_id, 0.0) <= now:
                    await self._resume(graph, ctx, queue, bus, group, episode_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=poll_s)

    def _drop_finished_reviews(self, bus: Bus, group: str) -> None:
        """Ack held reviews whose episode is finished (on the bus): nobody needs them."""
        finished = {d.msg_id for d in bus.history("episodes")}
        done = [e for e in self.reviews if e in finished and e not in self.paused]
        if done:
            bus.ack("reviews", group, [self.reviews.pop(e).msg_id for e in done])

    async def _resume(
        self, graph: Any, ctx: LoopContext, queue: WorkQueue, bus: Bus, group: str,
        episode_id: str,
    ) -> None:  # fmt: skip
        """Resume one paused episode with its review. A resume that raises (an
        engine timeout) leaves the episode paused and the review unacked, and is
        tried again later, up to ``loop.episode_attempts`` times in all."""
        from langgraph.types import Command

        d = self.reviews[episode_id]
        self.resuming.add(episode_id)
        self.paused.discard(episode_id)
        config = {"configurable": {"thread_id": episode_id}}
        try:
            snapshot = await graph.aget_state(config)
            if learner := snapshot.values.get("learner"):
                ctx.registry.hold(episode_id, "learner", learner["version"])
            ctx.log.info("episode.review_resumed", episode_id=episode_id,
                         reviewer=d.payload.get("reviewer"))  # fmt: skip
            if snapshot.interrupts:
                await graph.ainvoke(Command(resume=d.payload), config=config, context=ctx)
            elif snapshot.next:  # a retry: the review was taken, a later node raised
                await graph.ainvoke(None, config=config, context=ctx)
            interrupted = bool((await graph.aget_state(config)).interrupts)
        except Exception as err:
            delay = self._retry_in(ctx, episode_id, err, "episode.resume_retrying")
            if delay is not None:
                self.review_retry_at[episode_id] = time.monotonic() + delay
                self.paused.add(episode_id)  # the review stays held and unacked
                return
            interrupted = False
        finally:
            ctx.registry.release(episode_id)
            self.resuming.discard(episode_id)
        self.failures.pop(episode_id, None)
        self.review_retry_at.pop(episode_id, None)
        self.reviews.pop(episode_id, None)
        if interrupted:
            self._pause(ctx, episode_id)  # its refined critique wants a review too
        else:
            queue.done(episode_id)
        bus.ack("reviews", group, [d.msg_id])

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.progress_enabled,
        )

    def _update(
        self, bar: Progress, bus: Bus, registry: Registry, ep: Any, pr: Any, tr: Any, vr: Any
    ) -> None:
        c = self.counters
        waiting = bus.pending("pairs", "trainer")
        per = self.cfg.trainer.pairs_per_version
        version = registry.binding("learner").version
        bar.update(ep, completed=c.episodes, note=f"judge errors {c.judge_errors}")
        bar.update(pr, completed=c.pairs, note="preference pairs emitted")
        bar.update(tr, completed=min(waiting, per), note=f"pairs queued for v{version + 1}")
        bar.update(vr, completed=version, note=f"serving v{version}")


def _forget(tasks: dict[str, asyncio.Task[Any]], key: str) -> Any:
    return lambda _task: tasks.pop(key, None)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM -> SIGINT: asyncio.run cancels the run's task, whose clean-up runs."""
    os.kill(os.getpid(), signal.SIGINT)


def run_main(
    cfg: RunConfig, *, runs_dir: Path | None = None, run_id: str | None = None,
    progress: bool = True, trace_stdout: bool = False, console: Console | None = None,
    consumer: str = DEFAULT_CONSUMER,
) -> tuple[Path, list[VersionRow]]:  # fmt: skip
    run_id = run_id or new_run_id(cfg.run_name)
    run_dir = (runs_dir or cfg.runs_dir) / run_id
    loop = Loop(
        cfg, run_dir, run_id=run_id, progress=progress, trace_stdout=trace_stdout,
        console=console, consumer=consumer,
    )  # fmt: skip
    out = console or Console()
    # SIGTERM (kill, systemd, docker stop) ends the run as Ctrl+C does, so the
    # engines and the trainer, each in a session of its own, are stopped too.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        rows = asyncio.run(loop.run())
    except KeyboardInterrupt:
        # Loop.run's clean-up has stopped the engine and the trainer and written
        # summary.json; show what the run got to before the interrupt.
        render_table(loop.rows, out)
        out.print(
            f"[yellow]interrupted[/]: everything on the bus is kept, and episodes in flight "
            f"resume with `sparring run --run-id {run_id}`. run directory: {run_dir}"
        )
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    render_table(rows, out)
    out.print(f"run directory: {run_dir}   trace: sparring trace {run_dir}")
    return run_dir, rows
