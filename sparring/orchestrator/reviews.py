"""Review resumption: paused episodes go on as `sparring review` answers them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from langgraph.types import Command

from sparring.bus import Bus, Delivery
from sparring.bus.streams import EPISODES, REVIEWS
from sparring.graphs import CoreContext
from sparring.orchestrator.scheduling import EpisodeBook
from sparring.workqueue import WorkQueue

REVIEW_READ = 16  # new reviews read per poll, beyond those held
REVIEW_PRUNE_S = 60.0  # how often held reviews of finished episodes are dropped


class ReviewWatcher:
    """Reads the reviews stream in this orchestrator's own group and resumes
    the paused episodes (in ``book``) that reviews answer."""

    def __init__(
        self, graph: Any, ctx: CoreContext, queue: WorkQueue, book: EpisodeBook, consumer: str
    ) -> None:
        self.graph = graph
        self.ctx = ctx
        self.queue = queue
        self.book = book
        self.consumer = consumer
        self.group = f"reviews-{consumer}"
        self.reviews: dict[str, Delivery] = {}  # held, by episode id

    @property
    def bus(self) -> Bus:
        return self.ctx.bus

    async def watch(self, stop: asyncio.Event, poll_s: float = 0.5) -> None:
        """Resume paused episodes as `sparring review` answers them. Each
        orchestrator reads every review in its own group and holds those of
        episodes it has not paused (another orchestrator's, or one it may claim
        later) until their episode is finished; it acks one only once the
        episode it resumed is on the bus, or given up."""
        pruned = time.monotonic()
        while not stop.is_set():
            try:
                await self._read()
                if time.monotonic() - pruned > REVIEW_PRUNE_S:
                    pruned = time.monotonic()
                    await asyncio.to_thread(self._drop_finished_reviews)
            except Exception as err:  # a bus outage past its client's retries
                self.ctx.log.warning("review.read_failed", error=str(err), retry_in_s=poll_s)
            now = time.monotonic()
            for episode_id in sorted(self.book.paused & set(self.reviews)):
                if self.book.review_retry_at.get(episode_id, 0.0) <= now:
                    await self._resume(episode_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=poll_s)

    async def _read(self) -> None:
        """Hold the reviews not read yet, by episode (a malformed one is acked and skipped)."""
        # held reviews come back first: ask for enough to get past them
        count = len(self.reviews) + REVIEW_READ
        bus, group = self.bus, self.group
        for d in await asyncio.to_thread(bus.read, REVIEWS.name, group, self.consumer, count):
            episode_id = d.payload.get("episode_id")
            if not isinstance(episode_id, str):
                self.ctx.log.error("review.malformed", msg_id=d.msg_id, action="acked, skipped")
                bus.ack(REVIEWS.name, group, [d.msg_id])
                continue
            self.reviews.setdefault(episode_id, d)

    def _drop_finished_reviews(self) -> None:
        """Ack held reviews whose episode is finished (on the bus): nobody needs them."""
        finished = {d.msg_id for d in self.bus.history(EPISODES.name)}
        done = [e for e in self.reviews if e in finished and e not in self.book.paused]
        if done:
            self.bus.ack(REVIEWS.name, self.group, [self.reviews.pop(e).msg_id for e in done])

    async def _resume(self, episode_id: str) -> None:
        """Resume one paused episode with its review. A resume that raises (an
        engine timeout) leaves the episode paused and the review unacked, and is
        tried again later, up to ``loop.episode_attempts`` times in all."""
        d = self.reviews[episode_id]
        book, ctx = self.book, self.ctx
        book.resuming.add(episode_id)
        book.paused.discard(episode_id)
        try:
            interrupted = await self._continue(episode_id, d)
        except Exception as err:
            delay = book.retry_in(ctx, episode_id, err, "episode.resume_retrying")
            if delay is not None:
                book.review_retry_at[episode_id] = time.monotonic() + delay
                book.paused.add(episode_id)  # the review stays held and unacked
                return
            interrupted = False
        finally:
            ctx.registry.release(episode_id)
            book.resuming.discard(episode_id)
        book.failures.pop(episode_id, None)
        book.outages.pop(episode_id, None)
        book.review_retry_at.pop(episode_id, None)
        self.reviews.pop(episode_id, None)
        if interrupted:
            book.pause(ctx, episode_id)  # its refined critique wants a review too
        else:
            self.queue.done(episode_id)
        self.bus.ack(REVIEWS.name, self.group, [d.msg_id])

    async def _continue(self, episode_id: str, review: Delivery) -> bool:
        """Run the episode on from its checkpoint with ``review`` as the verdict
        it waits for; whether it is paused again."""
        graph, ctx = self.graph, self.ctx
        config = {"configurable": {"thread_id": episode_id}}
        snapshot = await graph.aget_state(config)
        if learner := snapshot.values.get("learner"):
            ctx.registry.hold(episode_id, "learner", learner["version"])
        ctx.log.info(
            "episode.review_resumed", episode_id=episode_id, reviewer=review.payload.get("reviewer")
        )
        if snapshot.interrupts:
            await graph.ainvoke(Command(resume=review.payload), config=config, context=ctx)
        elif snapshot.next:  # a retry: the review was taken, a later node raised
            await graph.ainvoke(None, config=config, context=ctx)
        return bool((await graph.aget_state(config)).interrupts)
