"""The main job: engines up, trainer in the background, episodes until the budget."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from contextlib import AsyncExitStack, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console

from sparring.agents import Binding, OpenAIChat
from sparring.bus import ARCHIVE_DIR, Bus, make_bus
from sparring.config import TRAINED_ROLE, RunConfig
from sparring.graphs import CoreContext, build_graph, check_roles
from sparring.graphs.checkpoints import check_checkpoints
from sparring.orchestrator.attacker_feed import role_feed
from sparring.orchestrator.engines import bring_up, managed_engines
from sparring.orchestrator.progress import Counters, progress_bars
from sparring.orchestrator.reviews import ReviewWatcher
from sparring.orchestrator.scheduling import EpisodeBook, Scheduler
from sparring.orchestrator.trainer import TrainerProcess, final_version, supervise_trainer
from sparring.orchestrator.wiring import (
    chat_client,
    make_context,
    make_registry,
    make_swapper,
    served_roles,
)
from sparring.redact import for_disk, secret_env
from sparring.serving.deploy import local_models
from sparring.serving.engine import EngineProcess
from sparring.serving.registry import Swapper
from sparring.summary import VersionRow, as_json, render_table, summarise_all
from sparring.tracing import Tracer
from sparring.training.worker import LOCK_FILE, check_pairs_from, clear_final, trainer_running
from sparring.workqueue import WorkQueue

# This orchestrator's name in the bus's consumer groups; replicas sharing a
# Redis need distinct names (docker compose: the container's hostname).
DEFAULT_CONSUMER = "local"


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def open_bus(cfg: RunConfig, run_dir: Path) -> Bus:
    return make_bus(
        cfg.bus.redis_url,
        cfg.bus.sqlite_path or run_dir / "bus.sqlite",
        namespace=run_dir.name,
        keep=cfg.bus.redis_keep,
        archive_dir=run_dir / ARCHIVE_DIR,
    )


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
        self.trainer: TrainerProcess | None = None  # the learner's
        self.trainers: dict[str, TrainerProcess] = {}  # by role (trainer.roles)
        self.rows: list[VersionRow] = []  # the learner's
        self.lineages: dict[str, list[VersionRow]] = {}  # every trained role's, by role
        # episodes paused for a person's verdict, resumed, or failed and waiting
        self.book = EpisodeBook(cfg.loop.episode_attempts)

    # -- set-up -------------------------------------------------------------
    def prepare(self) -> dict[str, Path]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # a resumed run has a budget of its own: an earlier end's request is void
        for role in self.cfg.trainer.roles:
            clear_final(self.run_dir / "versions", role)
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

    def _checkpoint_file(self) -> str:
        # One SQLite file per orchestrator: replicas may share the run directory.
        if self.consumer == DEFAULT_CONSUMER:
            return "checkpoints.sqlite"
        return f"checkpoints-{self.consumer}.sqlite"

    # -- the run --------------------------------------------------------------
    async def run(self) -> list[VersionRow]:
        # the graph and the roles it calls, before anything starts (a ConfigError)
        check_roles(self.cfg, "<run config>")
        # a trainer elsewhere (trainer.managed false) may see other runs than this machine
        check_pairs_from(self.cfg.trainer, self.run_dir, here=self.cfg.trainer.managed)
        paths = self.prepare()
        engines = managed_engines(self.cfg, paths, self.run_dir)
        self.trainers = {
            role: TrainerProcess(
                self.run_dir,
                self.config_path,
                self.cfg.trainer.threads,
                env=secret_env(self.cfg),
                role=role,
            )
            for role in self.cfg.trainer.roles
        }
        self.trainer = self.trainers.get(TRAINED_ROLE)
        check_checkpoints(self.run_dir / self._checkpoint_file())
        tracer = Tracer(self.run_dir, self.run_id, stdout=self.trace_stdout)
        bus = open_bus(self.cfg, self.run_dir)
        chat = chat_client(self.cfg)
        try:
            bindings = await bring_up(self.cfg, engines, paths, chat, self.console, tracer)
            if self.cfg.trainer.managed:
                for role, trainer in self.trainers.items():
                    trainer.start()
                    tracer.log.info("trainer.started", role=role, log=str(trainer.log_path))
            await self._episodes(bus, chat, bindings, tracer)
        finally:
            await self._shut_down(list(self.trainers.values()), engines, chat, bus, tracer)
        return self.rows

    async def _shut_down(
        self,
        trainers: list[TrainerProcess],
        engines: list[EngineProcess],
        chat: OpenAIChat,
        bus: Bus,
        tracer: Tracer,
    ) -> None:
        """Stop the trainers and the engines, then write what the run got to."""
        for trainer in trainers:
            trainer.stop()
        await chat.aclose()
        for engine in engines:
            engine.stop()
        self.lineages = summarise_all(bus, self.cfg.trainer.roles)
        self.rows = self.lineages["learner"]
        # summary.json: the learner's; summary-<role>.json: each other trained role's
        for role, rows in self.lineages.items():
            name = "summary.json" if role == "learner" else f"summary-{role}.json"
            (self.run_dir / name).write_text(json.dumps(as_json(rows), indent=2))
        tracer.log.info("run.finished", episodes=self.counters.episodes)
        tracer.close()
        bus.close()

    async def _episodes(
        self, bus: Bus, chat: OpenAIChat, bindings: dict[str, Binding], tracer: Tracer
    ) -> None:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        cfg = self.cfg
        registry = make_registry(cfg, bus, bindings, self.run_dir)
        ctx = make_context(cfg, self.run_id, chat, registry, bus, tracer, self.counters)
        stop = asyncio.Event()
        queue = WorkQueue(
            bus,
            self.run_id,
            self.consumer,
            limit=cfg.budget.episodes,
            claim_after_s=cfg.loop.task_claim_after_s,
        )
        async with AsyncExitStack() as stack:
            admin_http = await stack.enter_async_context(httpx.AsyncClient(timeout=600.0))
            swapper = make_swapper(
                cfg, bus, registry, chat, tracer, bindings, admin_http, self.consumer
            )
            saver = await stack.enter_async_context(
                AsyncSqliteSaver.from_conn_string(str(self.run_dir / self._checkpoint_file()))
            )
            graph = build_graph(cfg.loop.graph, checkpointer=saver)
            await self._run_tasks(graph, ctx, queue, swapper, stop, tracer)

    async def _run_tasks(
        self,
        graph: Any,
        ctx: CoreContext,
        queue: WorkQueue,
        swapper: Swapper,
        stop: asyncio.Event,
        tracer: Tracer,
    ) -> None:
        """The swapper, the trainer's supervision and the review watcher in the
        background while the scheduler runs episodes; all end with it."""
        cfg = self.cfg
        reviews = ReviewWatcher(graph, ctx, queue, self.book, self.consumer)
        scheduler = Scheduler(cfg, graph, ctx, queue, self.book, self.counters, self.started)
        swap_task = asyncio.create_task(swapper.run(stop))
        watch_task = asyncio.create_task(self._supervise(stop, tracer))
        review_task = asyncio.create_task(reviews.watch(stop))
        # the trained roles whose pairs compare episodes (attacker, planner)
        feed = role_feed(cfg.trainer.roles, ctx.bus, tracer.log)
        feed_task = asyncio.create_task(feed.run(stop)) if feed else None
        try:
            with progress_bars(cfg, self.console, self.progress_enabled) as bars:
                await scheduler.run(bars, watch_task)
            if watch_task.done():
                watch_task.result()  # a trainer gave up while the last episodes ran
            if feed is not None:
                await asyncio.to_thread(feed.publish)  # every episode's, before the end
            if cfg.trainer.final_version:
                await self._final_version(ctx, watch_task, tracer)
        finally:
            stop.set()
            await swap_task
            await review_task
            if feed_task is not None:
                await feed_task
            watch_task.cancel()

    async def _supervise(self, stop: asyncio.Event, tracer: Tracer) -> None:
        """Every trainer's supervision; ends with the first that gives up."""
        managed = self.cfg.trainer.managed
        await asyncio.gather(
            *(supervise_trainer(t, managed, stop, tracer) for t in self.trainers.values())
        )

    async def _final_version(
        self, ctx: CoreContext, watch: asyncio.Task[None], tracer: Tracer
    ) -> None:
        minutes = self.cfg.trainer.final_wait_minutes
        versions = self.run_dir / "versions"
        roles = []
        for role in self.cfg.trainer.roles:
            if self.cfg.trainer.managed or trainer_running(versions, role):
                roles.append(role)
                continue
            # a trainer of its own (compose: a service) holds the folder's lock
            # while it runs; none does, so nobody would answer
            tracer.log.warning(
                "run.final_version_skipped",
                role=role,
                reason=f"no trainer holds {versions / role / LOCK_FILE}",
            )
        if not roles:
            return
        note = (
            f"budget reached: training the final {' and '.join(roles)} version on the pairs "
            f"not yet trained on, then gating it (up to {minutes:g} minutes; trainer.log)"
        )
        stages: dict[str, str] = {}
        with self.console.status(note) if self.progress_enabled else nullcontext() as status:
            if status is None:
                self.console.print(note)

            def show(role: str, now: str) -> None:
                stages[role] = now
                if status is None:  # a log, not a terminal: one line per change
                    self.console.print(f"{role}: {now}")
                else:
                    status.update("\n".join([note, *(f"  {r}: {s}" for r, s in stages.items())]))

            await asyncio.gather(
                *(
                    final_version(
                        versions,
                        role,
                        ctx.bus,
                        ctx.registry,
                        minutes * 60,
                        watch,
                        tracer,
                        served=role in served_roles(self.cfg),
                        stage=partial(show, role),
                    )
                    for role in roles
                )
            )


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM -> SIGINT: asyncio.run cancels the run's task, whose clean-up runs."""
    os.kill(os.getpid(), signal.SIGINT)


def run_main(
    cfg: RunConfig,
    *,
    runs_dir: Path | None = None,
    run_id: str | None = None,
    progress: bool = True,
    trace_stdout: bool = False,
    console: Console | None = None,
    consumer: str = DEFAULT_CONSUMER,
) -> tuple[Path, list[VersionRow]]:
    run_id = run_id or new_run_id(cfg.run_name)
    run_dir = (runs_dir or cfg.runs_dir) / run_id
    loop = Loop(
        cfg,
        run_dir,
        run_id=run_id,
        progress=progress,
        trace_stdout=trace_stdout,
        console=console,
        consumer=consumer,
    )
    out = console or Console()
    # SIGTERM (kill, systemd, docker stop) ends the run as Ctrl+C does, so the
    # engines and the trainer, each in a session of its own, are stopped too.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # asyncio.run cancels the run on SIGINT only where SIGINT has Python's default
    # handler; a process started with SIGINT ignored (a shell's background job,
    # nohup, a test runner's child) would ignore Ctrl+C and SIGTERM alike
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rows = asyncio.run(loop.run())
    except KeyboardInterrupt:
        # Loop.run's clean-up has stopped the engine and the trainer and written
        # summary.json; show what the run got to before the interrupt.
        _render_tables(loop, out)
        out.print(
            f"[yellow]interrupted[/]: everything on the bus is kept, and episodes in flight "
            f"resume with `sparring run --run-id {run_id}`. run directory: {run_dir}"
        )
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    _render_tables(loop, out)
    out.print(f"run directory: {run_dir}   trace: sparring trace {run_dir}")
    return run_dir, rows


def _render_tables(loop: Loop, out: Console) -> None:
    """One summary table per trained role (the learner's first)."""
    for rows in (loop.lineages or {"learner": loop.rows}).values():
        render_table(rows, out)
