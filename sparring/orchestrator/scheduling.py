"""Episode scheduling: hand out episodes up to the concurrency until the
budget, retry those that raise, then wait for those in flight and for reviews."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from sparring.config import RunConfig
from sparring.graphs import CoreContext
from sparring.orchestrator.progress import Bars, Counters
from sparring.workqueue import WorkQueue

RETRY_BACKOFF_S = 5.0  # a failed episode's first wait; doubled per attempt
OUTAGE_WAIT_MAX_S = 30.0  # longest wait between tries while its engine is unreachable


def engine_unreachable(err: BaseException) -> bool:
    """The request never reached a model: no connection (an engine stopped or
    restarting), as opposed to an error the episode itself met."""
    return isinstance(err, openai.APIConnectionError | httpx.ConnectError) and not isinstance(
        err, openai.APITimeoutError
    )


@dataclass
class EpisodeBook:
    """Episodes that are not simply running: paused for a person's verdict,
    being resumed with one, or failed and waiting for their next attempt."""

    attempts: int  # loop.episode_attempts
    paused: set[str] = field(default_factory=set)
    resuming: set[str] = field(default_factory=set)
    # episodes that raised: attempts so far, and when the next may start
    failures: dict[str, int] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)
    review_retry_at: dict[str, float] = field(default_factory=dict)  # paused; resume raised
    outages: dict[str, int] = field(default_factory=dict)  # waits for an unreachable engine

    def cooling(self) -> set[str]:
        """Failed episodes waiting for their next attempt (not handed out yet)."""
        now = time.monotonic()
        for episode_id in [e for e, t in self.retry_at.items() if t <= now]:
            del self.retry_at[episode_id]
        return set(self.retry_at)

    def retry_in(
        self, ctx: CoreContext, episode_id: str, err: Exception, event: str
    ) -> float | None:
        """Count a failed attempt at ``episode_id``: seconds until the next one
        (5 s, 10 s, ... at most 300), or None once ``loop.episode_attempts`` are
        spent (then logged as episode.failed and forgotten). An unreachable
        engine spends no attempt: the episode waits for it (5 s, 10 s, ... 30 s)."""
        if engine_unreachable(err):
            # The engine is down or restarting: waiting helps and the episode is
            # not at fault, so no attempt is spent (the budget still ends the run).
            waits = self.outages[episode_id] = self.outages.get(episode_id, 0) + 1
            delay = min(RETRY_BACKOFF_S * 2 ** (waits - 1), OUTAGE_WAIT_MAX_S)
            ctx.log.warning(
                event,
                episode_id=episode_id,
                engine_unreachable=True,
                in_s=delay,
                error=repr(err)[:500],
            )
            return delay
        attempts = self.failures.pop(episode_id, 0) + 1
        if attempts >= self.attempts:
            self.outages.pop(episode_id, None)
            ctx.log.error(
                "episode.failed", episode_id=episode_id, attempts=attempts, error=repr(err)[:500]
            )
            return None
        self.failures[episode_id] = attempts
        delay = min(RETRY_BACKOFF_S * 2 ** (attempts - 1), 300.0)
        ctx.log.warning(
            event, episode_id=episode_id, attempt=attempts, in_s=delay, error=repr(err)[:500]
        )
        return delay

    def failed(self, ctx: CoreContext, queue: WorkQueue, episode_id: str, err: Exception) -> None:
        """An episode raised: try it again later from its last checkpoint (its
        task stays unacked), or, after ``loop.episode_attempts``, give it up."""
        delay = self.retry_in(ctx, episode_id, err, "episode.retrying")
        if delay is None:
            queue.done(episode_id)
        else:
            self.retry_at[episode_id] = time.monotonic() + delay

    def pause(self, ctx: CoreContext, episode_id: str, resumed: bool = False) -> None:
        self.paused.add(episode_id)
        ctx.log.info("episode.paused", episode_id=episode_id, after_restart=resumed)


def budget_reached(cfg: RunConfig, counters: Counters, started: float) -> str | None:
    """Why the run stops starting episodes (None: it goes on)."""
    b = cfg.budget
    if b.episodes is not None and counters.episodes >= b.episodes:
        return f"{b.episodes} episodes"
    if b.minutes is not None and time.monotonic() - started >= b.minutes * 60:
        return f"{b.minutes:g} minutes"
    if b.learner_versions is not None:
        # Stop once the target version (or a later one: the trainer keeps
        # going meanwhile) has also served a round of episodes.
        served = sum(n for v, n in counters.by_version.items() if v >= b.learner_versions)
        if served >= max(cfg.loop.concurrency, 4):
            return f"{b.learner_versions} learner versions"
    return None


class Scheduler:
    """Runs the episodes of one run through ``graph``, ``loop.concurrency`` at a time."""

    def __init__(
        self,
        cfg: RunConfig,
        graph: Any,
        ctx: CoreContext,
        queue: WorkQueue,
        book: EpisodeBook,
        counters: Counters,
        started: float,
    ) -> None:
        self.cfg = cfg
        self.graph = graph
        self.ctx = ctx
        self.queue = queue
        self.book = book
        self.counters = counters
        self.started = started
        self.sem = asyncio.Semaphore(cfg.loop.concurrency)
        self.tasks: dict[str, asyncio.Task[Any]] = {}

    def budget_reached(self) -> str | None:
        return budget_reached(self.cfg, self.counters, self.started)

    async def run(self, bars: Bars, watch: asyncio.Task[None] | None = None) -> None:
        """Episodes until the budget, then the end of those in flight and of
        resumed ones, and paused ones' reviews for up to ``loop.review_wait_s``.
        ``watch``: a supervision task whose end (the trainer gave up) ends the run."""
        ctx = self.ctx
        reason = await self._start_episodes(bars, watch)
        ctx.log.info("run.budget_reached", reason=reason, in_flight=len(self.tasks))
        if reason.endswith("minutes") and self.tasks:
            # A time budget is a deadline: stop episodes still running (their
            # checkpoints and tasks stay, so a restart under the same run id
            # and consumer resumes them) rather than wait minutes for them.
            for t in self.tasks.values():
                t.cancel()
            ctx.log.warning("run.cancelled_in_flight", episodes=len(self.tasks))
        await self._drain(bars)
        if self.book.paused:
            ctx.log.warning("run.left_paused", episodes=sorted(self.book.paused))
        if left := set(self.book.failures) | set(self.book.outages):
            # unacked: a later run under this run id tries them again
            ctx.log.warning("run.left_retrying", episodes=sorted(left))
        self._show(bars)

    async def _start_episodes(self, bars: Bars, watch: asyncio.Task[None] | None) -> str:
        """Start episodes as slots free up; returns why it stopped."""
        while (reason := self.budget_reached()) is None:
            if watch is not None and watch.done():
                watch.result()  # re-raises why supervision ended (the trainer gave up)
            await self.sem.acquire()
            if reason := self.budget_reached():
                self.sem.release()
                break
            held = set(self.tasks) | self.book.paused | self.book.resuming | self.book.cooling()
            episode_id = await asyncio.to_thread(self.queue.next, held)
            if episode_id is None:
                self.sem.release()
                if self.book.retry_at:  # all tasks exist; failed ones wait for a retry
                    await asyncio.sleep(0.5)
                    continue
                return f"{self.cfg.budget.episodes} episodes"
            t = asyncio.create_task(self._one(episode_id))
            self.tasks[episode_id] = t
            t.add_done_callback(_forget(self.tasks, episode_id))
            self._show(bars)
            await asyncio.sleep(0)
        return reason

    async def _drain(self, bars: Bars) -> None:
        """Wait for episodes in flight, resumes, and (for a while) reviews of paused ones."""
        review_deadline = time.monotonic() + self.cfg.loop.review_wait_s
        book = self.book
        while self.tasks or book.resuming or (book.paused and time.monotonic() < review_deadline):
            if self.tasks:
                await asyncio.wait(list(self.tasks.values()), timeout=0.5)
            else:
                await asyncio.sleep(0.5)
            self._show(bars)

    def _show(self, bars: Bars) -> None:
        bars.update(self.ctx.bus, self.ctx.registry, self.counters)

    async def _one(self, episode_id: str) -> None:
        graph, ctx = self.graph, self.ctx
        config = {"configurable": {"thread_id": episode_id}}
        try:
            state: dict[str, Any] | None = {"episode_id": episode_id, "started_at": time.time()}
            snapshot = await graph.aget_state(config)
            if snapshot.interrupts:
                self.book.pause(ctx, episode_id, resumed=True)  # paused before a restart
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
                self.book.pause(ctx, episode_id)  # its task stays unacked until it resumes
                return
            self.queue.done(episode_id)
            self.book.failures.pop(episode_id, None)
            self.book.outages.pop(episode_id, None)
        except asyncio.CancelledError:
            pass  # the time budget ran out mid-episode (see run.cancelled_in_flight)
        except Exception as err:
            self.book.failed(ctx, self.queue, episode_id, err)
        finally:
            ctx.registry.release(episode_id)
            self.sem.release()


def _forget(tasks: dict[str, asyncio.Task[Any]], key: str) -> Any:
    return lambda _task: tasks.pop(key, None)
