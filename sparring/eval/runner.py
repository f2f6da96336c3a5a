"""``sparring eval``: answer suites with learner versions, judge, store with the run.

Engines come from the run's own config (``runs/<run>/config.yaml``): the
learner's engine loads each version by path (or as a LoRA adapter on vLLM), the
critic keeps its engine and base model for every version, so all versions are
judged by the same judges. Managed engines are started on free ports, so a
live run on the configured ports is left alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sparring.agents import Binding, Learner, OpenAIChat, make_critic
from sparring.config import ConfigError, RunConfig
from sparring.degeneration import degeneration
from sparring.eval.judges import (
    CriticCall,
    Judge,
    RuleJudgement,
    critique_only,
    panel_judge,
    rule_judge,
)
from sparring.eval.metrics import Scored, compute
from sparring.eval.suites import CRITIC_KINDS, Suite, SuiteItem, answered
from sparring.graphs import load_run_config
from sparring.process import free_port
from sparring.redact import mask_text
from sparring.schemas import Critique, VersionPublished
from sparring.serving.deploy import engine_process, local_models, role_model
from sparring.serving.engine import engine_keys, wait_for_engine
from sparring.serving.loaders import load_role_adapters, make_loader, model_name_for
from sparring.serving.registry import warm
from sparring.training.worker import complete_versions, version_dir

EVAL_DIR = "eval"
ROLE = "learner"


class EvalError(RuntimeError):
    """An eval that cannot start; the message says what to give instead."""


class ItemResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    category: str
    expect: str
    answer: str
    completion_tokens: int
    latency_s: float
    rule: RuleJudgement
    critique: Critique | None  # None: not judged by the critic (EvalOptions.critic_on)
    degenerate: str | None = None  # the degeneration rule that matched (degeneration.py)
    # expect answer: the accepted answers and the wrong ones (read when scored,
    # so a stored result follows the matcher)
    answers: list[str] = Field(default_factory=list)
    wrong: list[str] = Field(default_factory=list)

    @property
    def correct(self) -> bool | None:
        """An answer item's reference answer given (whole words, none of the wrong
        ones, not degenerate); None for the other kinds."""
        if self.expect != "answer":
            return None
        return self.degenerate is None and answered(
            self.answer, tuple(self.answers), tuple(self.wrong)
        )

    def scored(self) -> Scored:
        v = self.critique.verdict if self.critique else None
        return Scored(
            self.expect,
            self.rule.refused,
            v.harmful if v else None,
            v.helpfulness if v else None,
            degenerate=self.degenerate is not None,
            judged=self.critique is not None,
            correct=self.correct,
        )


class Setup(BaseModel):
    """What the answers and verdicts depend on: a stored result is reused only
    when its setup is the same (else it is redone)."""

    model_config = ConfigDict(extra="forbid")

    suite_sha256: str
    learner_version: int
    learner_model: str  # the config's model name (its base), not a path
    learner_temperature: float
    learner_max_tokens: int
    critics: list[str]
    batched: bool = False
    # served (learner_system.txt), template (no system message: the chat
    # template's default) or the text of another system prompt
    system_prompt: str = "served"
    critic_on: list[str] = Field(default_factory=lambda: list(CRITIC_KINDS))


class SuiteResult(BaseModel):
    """``runs/<run>/eval/<suite>/v<N>.json``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    run: str
    suite: str
    source: str
    version: int
    setup: Setup
    metrics: dict[str, Any]
    items: list[ItemResult]
    created_at: float
    elapsed_s: float

    def scored(self) -> list[Scored]:
        return [i.scored() for i in self.items]


@dataclass(frozen=True)
class EvalOptions:
    versions: tuple[str, ...] = ("all",)  # numbers, "all" or "latest"
    limit: int | None = None
    force: bool = False
    temperature: float = 0.0  # greedy: the same version gives the same answers
    max_tokens: int | None = None  # None: the run's roles.learner.max_tokens
    concurrency: int = 8
    progress: bool = True
    # the learner's system prompt: served, template (the chat template's own) or a text
    system: str = "served"
    # which items (by expect) the critic judges too; the rule judge reads every answer
    critic_on: tuple[str, ...] = CRITIC_KINDS
    # serve the learner with continuous batching (its own transformers-serve
    # engine only): faster on a CPU, still greedy, but batch composition
    # moves bf16 numerics, so a rerun may word a few answers differently
    batch: bool = False


def resolve_run(target: str, runs_dir: Path) -> Path:
    for candidate in (Path(target), runs_dir / target):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise EvalError(
        f"no run at '{target}': give a run directory (with the config.yaml a run writes) "
        f"or a run id under {runs_dir}/"
    )


def run_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    try:
        return load_run_config(run_dir / "config.yaml", overrides)
    except ConfigError as err:
        raise EvalError(str(err)) from None


def select_versions(run_dir: Path, wanted: tuple[str, ...]) -> dict[int, VersionPublished | None]:
    """The learner versions to evaluate: v0 (the base) and each finished vN on disk."""
    found: dict[int, VersionPublished | None] = {0: None}
    found.update(complete_versions(run_dir / "versions", ROLE))
    chosen: set[int] = set()
    for w in wanted:
        if w == "all":
            chosen |= set(found)
        elif w == "latest":
            chosen.add(max(found))
        elif w.removeprefix("v").isdigit() and int(w.removeprefix("v")) in found:
            chosen.add(int(w.removeprefix("v")))
        else:
            have = ", ".join(f"v{n}" for n in found)
            raise EvalError(
                f"{run_dir}: no learner version '{w}' (it has {have}); give a number, "
                "'all' or 'latest'"
            )
    return {n: found[n] for n in sorted(chosen)}


def condition_tag(system: str) -> str:
    """How a system-prompt condition is named in file names and tables."""
    if system in ("served", "template"):
        return system
    return "system-" + hashlib.sha256(system.encode()).hexdigest()[:8]


def result_name(version: int | str, system: str = "served") -> str:
    """``vN.json`` under the served system prompt, ``vN-<condition>.json`` otherwise."""
    tag = "" if system == "served" else f"-{condition_tag(system)}"
    return f"v{version}{tag}.json"


def result_path(run_dir: Path, suite: str, version: int, system: str = "served") -> Path:
    return run_dir / EVAL_DIR / suite / result_name(version, system)


def load_result(path: Path) -> SuiteResult | None:
    try:
        return SuiteResult.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None  # missing, or written by another schema: redo it


def save_result(path: Path, result: SuiteResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(result.model_dump_json(indent=2))
    tmp.replace(path)


class Evaluation:
    """One ``sparring eval``: which (suite, version) pairs to do, the engines and
    judges to do them with, and where the results go."""

    def __init__(
        self,
        run_dir: Path,
        cfg: RunConfig,
        suites: list[Suite],
        opts: EvalOptions,
        console: Console | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.suites = [s.head(opts.limit) for s in suites]
        self.opts = opts
        self.console = console or Console(stderr=True)
        self.versions = select_versions(run_dir, opts.versions)
        self.max_tokens = opts.max_tokens or cfg.roles[ROLE].max_tokens
        self.results: dict[tuple[str, int], SuiteResult] = {}
        self.skipped: list[tuple[str, int]] = []
        self.pending: list[tuple[Suite, int]] | None = None

    def setup(self, suite: Suite, version: int) -> Setup:
        critics = []
        for role in self.cfg.loop.critics:
            rc = self.cfg.roles[role]
            critics.append(
                f"{role}={rc.model} temperature={rc.temperature} max_tokens={rc.max_tokens} "
                f"shots={self.cfg.loop.critic_shots} retries={self.cfg.loop.critic_retries}"
            )
        return Setup(
            suite_sha256=suite.sha256,
            learner_version=version,
            learner_model=self.cfg.roles[ROLE].model,
            learner_temperature=self.opts.temperature,
            learner_max_tokens=self.max_tokens,
            critics=critics,
            system_prompt=self.opts.system,
            critic_on=list(self.opts.critic_on),
            batched=self._batched(),
        )

    def plan(self) -> list[tuple[Suite, int]]:
        """Pairs without a fresh stored result (all of them with ``force``); the
        others are read back and listed in ``skipped``."""
        if self.pending is not None:
            return self.pending
        out = []
        for v in self.versions:
            for suite in self.suites:
                stored = load_result(result_path(self.run_dir, suite.name, v, self.opts.system))
                if stored and stored.setup == self.setup(suite, v) and not self.opts.force:
                    self.results[(suite.name, v)] = stored
                    self.skipped.append((suite.name, v))
                else:
                    out.append((suite, v))
        self.pending = out
        return out

    async def run(self) -> list[SuiteResult]:
        if todo := self.plan():
            await self._evaluate(todo)
        return [
            self.results[(s.name, v)]
            for v in self.versions
            for s in self.suites
            if (s.name, v) in self.results
        ]

    # -- engines and bindings ----------------------------------------------------
    def _roles(self) -> list[str]:
        """The learner, and the critics when they judge anything (their engines start)."""
        critics = dict.fromkeys(self.cfg.loop.critics) if self.opts.critic_on else {}
        return [ROLE, *critics]

    def _own_engines(self) -> RunConfig:
        """The run's config with each managed engine the eval needs on a free port."""
        engines = dict(self.cfg.engines)
        for name in {self.cfg.roles[r].engine for r in self._roles()}:
            ec = engines[name]
            if ec.managed and ec.base_url is None:
                engines[name] = ec.model_copy(update={"port": free_port()})
        if self._batched():
            name = self.cfg.roles[ROLE].engine
            engines[name] = engines[name].model_copy(update={"continuous_batching": True})
        return self.cfg.model_copy(update={"engines": engines})

    def _batched(self) -> bool:
        """Whether the learner's engine batches here (``batch``, and an engine of
        its own: a batching engine serves one model at a time)."""
        name = self.cfg.roles[ROLE].engine
        ec = self.cfg.engines[name]
        alone = all(self.cfg.roles[r].engine != name for r in self.cfg.loop.critics)
        return self.opts.batch and alone and ec.managed and ec.kind == "transformers-serve"

    async def _start(self, cfg: RunConfig, stack: AsyncExitStack) -> None:
        names = sorted({cfg.roles[r].engine for r in self._roles()})
        paths = local_models(cfg)
        procs = [
            engine_process(cfg, n, paths, self.run_dir / EVAL_DIR / f"engine-{n}.log")
            for n in names
            if cfg.engines[n].managed
        ]
        for p in procs:
            stack.callback(p.stop)
        with self.console.status(f"starting engine(s) {', '.join(p.name for p in procs)}"):
            await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
        for n in names:
            if not cfg.engines[n].managed:
                url = mask_text(cfg.engines[n].url())
                with self.console.status(f"waiting for engine '{n}' at {url}"):
                    await wait_for_engine(n, cfg.engines[n])

    async def _evaluate(self, todo: list[tuple[Suite, int]]) -> None:
        cfg = self._own_engines()
        chat = OpenAIChat(
            timeout_s=max(cfg.roles[r].timeout_s for r in self._roles()),
            api_keys=engine_keys(cfg),
        )
        async with AsyncExitStack() as stack:
            stack.push_async_callback(chat.aclose)
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=600.0))
            await self._start(cfg, stack)
            await load_role_adapters(cfg, self._roles())
            bind = _binder(cfg)
            judge = await self._judge(cfg, chat, bind) if self.opts.critic_on else None
            learner = Learner(
                chat,
                temperature=self.opts.temperature,
                max_tokens=self.max_tokens,
                system=self.opts.system,
            )
            sem = asyncio.Semaphore(self.opts.concurrency)
            with self._progress() as bar:
                for v in sorted({v for _, v in todo}):
                    binding = await self._load_version(cfg, chat, http, bind(ROLE), v)
                    suites = [s for s, sv in todo if sv == v]
                    await asyncio.gather(
                        *(self._suite(s, binding, learner, judge, sem, bar) for s in suites)
                    )

    async def _judge(
        self, cfg: RunConfig, chat: OpenAIChat, bind: Callable[[str], Binding]
    ) -> Judge:
        """The run's critic(s) on their base models, loaded at the sampling their
        engine fixes (the batching engine keeps the first request's)."""
        critics: list[tuple[Binding, CriticCall]] = []
        for role in dict.fromkeys(cfg.loop.critics):
            b, rc = bind(role), cfg.roles[role]
            with self.console.status(f"loading the {role}'s model"):
                await warm(chat, b, temperature=cfg.engines[rc.engine].sampling_temperature)
            critic = make_critic(
                chat,
                temperature=rc.temperature,
                max_tokens=rc.max_tokens,
                retries=cfg.loop.critic_retries,
                shots=cfg.loop.critic_shots,
            )
            critics.append((b, critique_only(critic)))
        return panel_judge(critics)

    async def _load_version(
        self, cfg: RunConfig, chat: OpenAIChat, http: httpx.AsyncClient, base: Binding, v: int
    ) -> Binding:
        """The learner's binding for version ``v``, loaded and warmed on its engine."""
        engine = cfg.engines[cfg.roles[ROLE].engine]
        binding = base
        if v > 0:
            path = self._version_path(v, engine.swap_mode())
            binding = Binding(
                ROLE, base.base_url, model_name_for(engine, base.model, ROLE, v, path), v
            )
            if engine.swap_mode() == "full":
                self.console.print(
                    f"[yellow]warning[/]: engines.{cfg.roles[ROLE].engine} reloads full weights "
                    f"in place: v{v} replaces what that server serves until the next swap"
                )
            loader = make_loader(engine, http, base.model)
            for replica in engine.replica_urls():
                await loader.load(replica, ROLE, v, path)
        # a batching engine fixes the sampling at the first request: the eval's
        temperature = self.opts.temperature if self._batched() else engine.sampling_temperature
        with self.console.status(f"loading learner v{v}"):
            await warm(chat, binding, temperature=temperature)
        return binding

    def _version_path(self, version: int, mode: str) -> str:
        """Where the engine finds version N: its folder here (transformers serve),
        or the path the trainer published (vLLM sees the shared volume)."""
        manifest = self.versions[version]
        if mode != "path" and manifest is not None:
            return manifest.path
        return str(version_dir(self.run_dir / "versions", ROLE, version).resolve())

    # -- answering and judging ---------------------------------------------------
    async def _suite(
        self,
        suite: Suite,
        binding: Binding,
        learner: Learner,
        judge: Judge | None,
        sem: asyncio.Semaphore,
        bar: Progress,
    ) -> None:
        task = bar.add_task(f"v{binding.version} {suite.name}", total=len(suite.items))
        start = time.monotonic()

        async def one(item: SuiteItem) -> ItemResult:
            async with sem:
                out = await learner.respond(binding, item.prompt)
                critique = None
                if judge is not None and item.expect in self.opts.critic_on:
                    critique = await judge(item.prompt, out.text)
            bar.advance(task)
            return ItemResult(
                prompt=item.prompt,
                category=item.category,
                expect=item.expect,
                answer=out.text,
                completion_tokens=out.completion_tokens,
                latency_s=round(out.latency_s, 3),
                rule=rule_judge(out.text),
                critique=critique,
                degenerate=degeneration(out.text),
                answers=list(item.answers),
                wrong=list(item.wrong),
            )

        items = await asyncio.gather(*(one(i) for i in suite.items))
        result = SuiteResult(
            run=self.run_dir.name,
            suite=suite.name,
            source=suite.source,
            version=binding.version,
            setup=self.setup(suite, binding.version),
            metrics=asdict(compute([i.scored() for i in items])),
            items=list(items),
            created_at=time.time(),
            elapsed_s=round(time.monotonic() - start, 2),
        )
        save_result(
            result_path(self.run_dir, suite.name, binding.version, self.opts.system), result
        )
        self.results[(suite.name, binding.version)] = result

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.opts.progress,
        )


def _binder(cfg: RunConfig) -> Callable[[str], Binding]:
    """A role's base binding (its adapter, where it has one) on the eval's engines."""
    paths = local_models(cfg)

    def bind(role: str) -> Binding:
        rc = cfg.roles[role]
        return Binding(role, cfg.engines[rc.engine].url(), role_model(cfg, role, paths))

    return bind
