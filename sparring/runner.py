"""The main job: engines up, trainer in the background, episodes until the budget."""

from __future__ import annotations

import asyncio
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

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sparring.agents import Attacker, Binding, Learner, OpenAIChat, make_critic
from sparring.agents.prompts import load_seeds
from sparring.bus import Bus, make_bus
from sparring.config import RunConfig
from sparring.graphs import build_graph
from sparring.graphs.nodes import LoopContext
from sparring.schemas import Episode, PreferencePair
from sparring.serving.engine import EngineProcess
from sparring.serving.models import resolve_model_path
from sparring.serving.registry import Registry, Swapper, warm
from sparring.summary import VersionRow, as_json, render_table, summarise
from sparring.tracing import Tracer


@dataclass
class Counters:
    episodes: int = 0
    pairs: int = 0
    judge_errors: int = 0
    by_version: dict[int, int] = field(default_factory=dict)

    def add(self, episode: Episode, pairs: list[PreferencePair]) -> None:
        self.episodes += 1
        self.pairs += len(pairs)
        self.judge_errors += episode.outcome == "judge_error"
        v = episode.learner.version
        self.by_version[v] = self.by_version.get(v, 0) + 1


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def open_bus(cfg: RunConfig, run_dir: Path) -> Bus:
    return make_bus(cfg.bus.redis_url, cfg.bus.sqlite_path or run_dir / "bus.sqlite")


def base_bindings(cfg: RunConfig, model_paths: dict[str, Path]) -> dict[str, Binding]:
    return {
        role: Binding(role, cfg.engines[rc.engine].url(), str(model_paths[rc.model]), 0)
        for role, rc in cfg.roles.items()
    }


class TrainerProcess:
    """``sparring train`` as a background process whose JSON log is trainer.log."""

    def __init__(self, run_dir: Path, config_path: Path) -> None:
        self.log_path = run_dir / "trainer.log"
        self._cmd = [
            sys.executable, "-m", "sparring.training.worker",
            "--run-dir", str(run_dir), "--config", str(config_path),
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

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
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.run_id = run_id or run_dir.name
        self.console = console or Console(stderr=True)
        self.progress_enabled = progress
        self.trace_stdout = trace_stdout
        self.counters = Counters()
        self.started = time.monotonic()

    # -- set-up -------------------------------------------------------------
    def prepare(self) -> dict[str, Path]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        paths = {
            name: resolve_model_path(src.builtin, src.path) for name, src in self.cfg.models.items()
        }
        resolved = self.cfg.model_dump(mode="json")
        for name, p in paths.items():
            resolved["models"][name] = {"path": str(p)}
        self.config_path = self.run_dir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(resolved, sort_keys=False))
        return paths

    def budget_reached(self, registry: Registry, started: int = 0) -> str | None:
        b = self.cfg.budget
        if b.episodes is not None and max(started, self.counters.episodes) >= b.episodes:
            return f"{b.episodes} episodes"
        if b.minutes is not None and time.monotonic() - self.started >= b.minutes * 60:
            return f"{b.minutes:g} minutes"
        if b.learner_versions is not None:
            v = registry.binding("learner").version
            # Stop once the last version has also been measured for a round.
            if v >= b.learner_versions and self.counters.by_version.get(v, 0) >= max(
                self.cfg.loop.concurrency, 4
            ):
                return f"{b.learner_versions} learner versions"
        return None

    # -- the run --------------------------------------------------------------
    async def run(self) -> list[VersionRow]:
        paths = self.prepare()
        engines = [
            EngineProcess(name, ec, self.run_dir / f"engine-{name}.log")
            for name, ec in self.cfg.engines.items()
            if ec.managed
        ]
        trainer = TrainerProcess(self.run_dir, self.config_path)
        tracer = Tracer(self.run_dir, self.run_id, stdout=self.trace_stdout)
        bus = open_bus(self.cfg, self.run_dir)
        chat = OpenAIChat(timeout_s=max(rc.timeout_s for rc in self.cfg.roles.values()))
        try:
            for engine in engines:
                with self.console.status(f"starting engine '{engine.name}' ({engine.cfg.kind})"):
                    engine.start()
                tracer.log.info("engine.started", engine=engine.name, pid=engine.pid)
            bindings = base_bindings(self.cfg, paths)
            with self.console.status("loading base models into the engine"):
                for b in {(b.base_url, b.model): b for b in bindings.values()}.values():
                    await warm(chat, b)
            if self.cfg.trainer.managed:
                trainer.start()
                tracer.log.info("trainer.started", log=str(trainer.log_path))
            await self._episodes(bus, chat, bindings, tracer)
        finally:
            trainer.stop()
            await chat.aclose()
            for engine in engines:
                engine.stop()
            rows = summarise(bus)
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
        registry = Registry(bus, bindings)
        rc = cfg.roles
        ctx = LoopContext(
            run_id=self.run_id,
            attacker=Attacker(
                chat, load_seeds(), temperature=rc["attacker"].temperature,
                max_tokens=rc["attacker"].max_tokens,
                recent_window=cfg.loop.attacker_recent_window, rng=random.Random(cfg.loop.seed),
            ),
            learner=Learner(
                chat, temperature=rc["learner"].temperature, max_tokens=rc["learner"].max_tokens
            ),
            critic=make_critic(
                chat, temperature=rc["critic"].temperature, max_tokens=rc["critic"].max_tokens,
                retries=cfg.loop.critic_retries,
            ),
            registry=registry, bus=bus, log=tracer.log, pair_margin=cfg.loop.pair_margin,
            on_episode=self.counters.add,
        )  # fmt: skip
        stop = asyncio.Event()
        swapper = Swapper(bus, registry, chat, tracer.log, group="swapper")
        async with AsyncExitStack() as stack:
            saver = await stack.enter_async_context(
                AsyncSqliteSaver.from_conn_string(str(self.run_dir / "checkpoints.sqlite"))
            )
            graph = build_graph(cfg.loop.graph, checkpointer=saver)
            swap_task = asyncio.create_task(swapper.run(stop))
            try:
                await self._schedule(graph, ctx, registry, bus)
            finally:
                stop.set()
                await swap_task

    async def _schedule(self, graph: Any, ctx: LoopContext, registry: Registry, bus: Bus) -> None:
        cfg = self.cfg
        sem = asyncio.Semaphore(cfg.loop.concurrency)
        tasks: set[asyncio.Task[Any]] = set()
        n = 0
        with self._progress() as bar:
            ep_task = bar.add_task("episodes", total=cfg.budget.episodes)
            pair_task = bar.add_task("pairs", total=None)
            train_task = bar.add_task("training", total=cfg.trainer.pairs_per_version)
            ver_task = bar.add_task("learner version", total=cfg.budget.learner_versions)
            while (reason := self.budget_reached(registry, n)) is None:
                await sem.acquire()
                if self.budget_reached(registry, n):
                    sem.release()
                    break
                episode_id = f"{self.run_id}-ep{n:05d}"
                n += 1
                t = asyncio.create_task(self._one(graph, ctx, episode_id, sem))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                self._update(bar, bus, registry, ep_task, pair_task, train_task, ver_task)
                await asyncio.sleep(0)
            ctx.log.info("run.budget_reached", reason=reason or "budget")
            while tasks:
                await asyncio.wait(tasks, timeout=0.5)
                self._update(bar, bus, registry, ep_task, pair_task, train_task, ver_task)
            self._update(bar, bus, registry, ep_task, pair_task, train_task, ver_task)

    async def _one(
        self, graph: Any, ctx: LoopContext, episode_id: str, sem: asyncio.Semaphore
    ) -> None:
        try:
            config = {"configurable": {"thread_id": episode_id}}
            state = {"episode_id": episode_id, "started_at": time.time()}
            await graph.ainvoke(state, config=config, context=ctx)
        except Exception as err:
            ctx.log.error("episode.failed", episode_id=episode_id, error=repr(err))
        finally:
            sem.release()

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


def run_main(
    cfg: RunConfig, *, runs_dir: Path | None = None, run_id: str | None = None,
    progress: bool = True, trace_stdout: bool = False, console: Console | None = None,
) -> tuple[Path, list[VersionRow]]:  # fmt: skip
    run_id = run_id or new_run_id(cfg.run_name)
    run_dir = (runs_dir or cfg.runs_dir) / run_id
    loop = Loop(
        cfg, run_dir, run_id=run_id, progress=progress, trace_stdout=trace_stdout, console=console
    )
    rows = asyncio.run(loop.run())
    out = console or Console()
    render_table(rows, out)
    out.print(f"run directory: {run_dir}   trace: sparring trace {run_dir}")
    return run_dir, rows
