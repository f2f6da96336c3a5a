"""A resume from a person's review that fails: the episode stays paused and its
review held (unacked) until a later attempt succeeds, or, after
``loop.episode_attempts``, the episode is given up and its review acked once.

Real parts throughout: a compiled LangGraph graph with a checkpointer (a review
node that pauses on ``interrupt``, then a "refine" node that times out the first
N times, as a learner's engine would), the SQLite bus, the work queue, the
registry and a JSON logger; no model is called.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import httpx
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from sparring.agents import Learner
from sparring.bus import Bus, make_bus
from sparring.bus.streams import REVIEWS, TASKS
from sparring.graphs import CoreContext
from sparring.llm import Binding, OpenAIChat
from sparring.orchestrator.reviews import ReviewWatcher
from sparring.orchestrator.scheduling import EpisodeBook
from sparring.review import submit
from sparring.schemas import HumanReview
from sparring.serving.registry import Registry
from sparring.tracing import process_logger
from sparring.workqueue import GROUP, WorkQueue

CONSUMER = "orch-a"
REVIEW_GROUP = f"reviews-{CONSUMER}"
LEARNER_VERSION = 3


class State(TypedDict, total=False):
    episode_id: str
    learner: dict[str, Any]
    review: dict[str, Any]
    refined_answer: str


class FlakySaver(InMemorySaver):
    """An in-memory checkpointer whose next ``failing_reads`` reads raise, as a
    checkpoint store that is briefly unreadable would."""

    failing_reads = 0

    async def aget_tuple(self, config: Any) -> Any:
        if self.failing_reads > 0:
            self.failing_reads -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return await super().aget_tuple(config)


class Episode:
    """A graph of three nodes: ``start`` pins the learner, ``review`` pauses for a
    person, ``refine`` raises ``TimeoutError`` its first ``timeouts`` times."""

    def __init__(self, timeouts: int, error: type[Exception] = TimeoutError) -> None:
        self.timeouts = timeouts
        self.error = error
        self.refine_calls = 0
        self.leases_in_refine: list[dict[tuple[str, int], int]] = []
        self.saver = FlakySaver()
        g = StateGraph(State, context_schema=CoreContext)
        g.add_node("start", self._start)
        g.add_node("review", self._review)
        g.add_node("refine", self._refine)
        g.add_edge(START, "start")
        g.add_edge("start", "review")
        g.add_edge("review", "refine")
        g.add_edge("refine", END)
        self.graph = g.compile(checkpointer=self.saver)

    async def _start(self, state: State, runtime: Runtime[CoreContext]) -> dict[str, Any]:
        b = runtime.context.registry.acquire("learner", state["episode_id"])
        return {
            "learner": {
                "role": b.role,
                "base_url": b.base_url,
                "model": b.model,
                "version": LEARNER_VERSION,
            }
        }

    async def _review(self, state: State, runtime: Runtime[CoreContext]) -> dict[str, Any]:
        answer = interrupt({"episode_id": state["episode_id"], "node": "critique"})
        return {"review": HumanReview.model_validate(answer).model_dump(mode="json")}

    async def _refine(self, state: State, runtime: Runtime[CoreContext]) -> dict[str, Any]:
        self.refine_calls += 1
        self.leases_in_refine.append(dict(runtime.context.registry.in_flight))
        if self.refine_calls <= self.timeouts:
            if self.error is httpx.ConnectError:  # the engine is down or restarting
                raise httpx.ConnectError("connection refused")
            raise self.error("the learner's engine did not answer in time")
        return {"refined_answer": f"refined after {state['review']['reviewer']}'s review"}

    def config(self, episode_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": episode_id}}


class Rig:
    """A bus, work queue, context, book and watcher around one paused episode."""

    def __init__(self, tmp_path: Path, episode: Episode, attempts: int) -> None:
        self.bus: Bus = make_bus(None, tmp_path / "bus.sqlite")
        self.logs = io.StringIO()
        chat = OpenAIChat()
        self.registry = Registry(
            self.bus, {"learner": Binding("learner", "http://127.0.0.1:9/v1", "tiny", 0)}
        )
        self.ctx = CoreContext(
            run_id="run",
            graph="review-resume",
            chat=chat,
            registry=self.registry,
            bus=self.bus,
            log=process_logger("orchestrator", stream=self.logs),
            learner=Learner(chat, temperature=0.0, max_tokens=8),
        )
        self.queue = WorkQueue(self.bus, "run", CONSUMER, limit=1)
        self.book = EpisodeBook(attempts)
        self.episode = episode
        self.watcher = ReviewWatcher(episode.graph, self.ctx, self.queue, self.book, CONSUMER)
        self.acks: list[tuple[str, str, list[str]]] = []
        real_ack = self.bus.ack

        def ack(stream: str, group: str, msg_ids: list[str]) -> None:
            self.acks.append((stream, group, list(msg_ids)))
            real_ack(stream, group, msg_ids)

        self.bus.ack = ack  # type: ignore[method-assign]

    async def pause_episode(self) -> str:
        """Run one episode as the scheduler does until it pauses; publish the
        person's review of it as `sparring review` does."""
        episode_id = self.queue.next(set())
        assert episode_id is not None
        config = self.episode.config(episode_id)
        await self.episode.graph.ainvoke({"episode_id": episode_id}, config, context=self.ctx)
        self.registry.release(episode_id)
        assert (await self.episode.graph.aget_state(config)).interrupts
        self.book.pause(self.ctx, episode_id)
        review = HumanReview(
            episode_id=episode_id,
            node="critique",
            harmful=True,
            helpfulness=2,
            critique="It helps with something harmful.",
            reviewer="tester",
        )
        assert submit(self.bus, review)
        return episode_id

    def review_acks(self) -> list[list[str]]:
        return [ids for stream, group, ids in self.acks if stream == REVIEWS.name]

    def unacked_reviews(self) -> int:
        return self.bus.pending(REVIEWS.name, REVIEW_GROUP)

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.logs.getvalue().splitlines()
        return [e for e in map(json.loads, lines) if e.get("event") == name]

    def assert_held_for_retry(self, episode_id: str, before: float) -> None:
        """Paused again, not resuming, its review held and unacked, a retry due later."""
        book = self.book
        assert book.resuming == set()
        assert book.paused == {episode_id}
        assert set(self.watcher.reviews) == {episode_id}
        assert self.unacked_reviews() == 1
        assert self.review_acks() == []
        assert book.review_retry_at[episode_id] > before
        assert self.registry.in_flight == {}  # the resume's lease was released
        assert self.bus.pending(TASKS.name, GROUP) == 1  # the episode is not done
        assert self.bus.history("episodes") == []


async def watch_until(rig: Rig, done: Callable[[], bool], polls_after: int = 0) -> None:
    """Run ``watch`` (short polls) until ``done()``, then ``polls_after`` more polls."""
    poll_s = 0.01
    stop = asyncio.Event()
    task = asyncio.create_task(rig.watcher.watch(stop, poll_s=poll_s))
    deadline = time.monotonic() + 10.0
    try:
        while not done():
            assert not task.done(), task.result()
            assert time.monotonic() < deadline, "the watcher did not get there"
            await asyncio.sleep(poll_s)
        await asyncio.sleep(poll_s * polls_after)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5.0)


def test_a_resume_that_times_out_stays_paused_unacked_and_succeeds_later(
    tmp_path: Path,
) -> None:
    episode = Episode(timeouts=1)
    rig = Rig(tmp_path, episode, attempts=3)

    async def go() -> None:
        episode_id = await rig.pause_episode()
        config = episode.config(episode_id)
        await rig.watcher._read()
        assert set(rig.watcher.reviews) == {episode_id}
        assert rig.unacked_reviews() == 1

        before = time.monotonic()
        await rig.watcher._resume(episode_id)  # refine raises TimeoutError: no exception here
        assert episode.refine_calls == 1
        # the resume ran on the learner version the episode is pinned to
        assert episode.leases_in_refine == [{("learner", LEARNER_VERSION): 1}]
        rig.assert_held_for_retry(episode_id, before)
        assert rig.book.review_retry_at[episode_id] >= before + 5.0  # the first backoff
        assert rig.book.failures == {episode_id: 1}
        (retrying,) = rig.events("episode.resume_retrying")
        assert retrying["episode_id"] == episode_id and retrying["attempt"] == 1
        assert "TimeoutError" in retrying["error"]
        # the review was taken; the node after it is what is left to run
        snapshot = await episode.graph.aget_state(config)
        assert not snapshot.interrupts and snapshot.next == ("refine",)

        # Before its retry time the watcher leaves it alone (and holds the review).
        await watch_until(rig, lambda: True, polls_after=5)
        assert episode.refine_calls == 1
        rig.assert_held_for_retry(episode_id, before)

        # Once the backoff has passed, the watcher resumes it and it finishes.
        rig.book.review_retry_at[episode_id] = time.monotonic() - 1.0
        await watch_until(rig, lambda: rig.bus.pending(TASKS.name, GROUP) == 0)
        assert episode.refine_calls == 2
        assert rig.unacked_reviews() == 0
        assert rig.review_acks() == [[f"{episode_id}:critique"]]
        book = rig.book
        assert book.paused == set() and book.resuming == set()
        assert book.failures == {} and book.review_retry_at == {}
        assert rig.watcher.reviews == {}
        assert rig.registry.in_flight == {}
        snapshot = await episode.graph.aget_state(config)
        assert snapshot.next == () and not snapshot.interrupts
        assert snapshot.values["review"]["reviewer"] == "tester"
        assert snapshot.values["refined_answer"] == "refined after tester's review"
        assert rig.events("episode.failed") == []

    asyncio.run(go())


def test_a_checkpoint_read_that_raises_leaves_nothing_resuming_and_the_review_unacked(
    tmp_path: Path,
) -> None:
    episode = Episode(timeouts=0)
    rig = Rig(tmp_path, episode, attempts=3)

    async def go() -> None:
        episode_id = await rig.pause_episode()
        await rig.watcher._read()
        episode.saver.failing_reads = 1  # graph.aget_state, the resume's first step, raises

        before = time.monotonic()
        await rig.watcher._resume(episode_id)
        assert episode.saver.failing_reads == 0  # the failure did happen
        assert episode.refine_calls == 0
        # Nothing is left in `resuming` (the scheduler's drain waits on it).
        rig.assert_held_for_retry(episode_id, before)
        (retrying,) = rig.events("episode.resume_retrying")
        assert "disk I/O error" in retrying["error"]
        snapshot = await episode.graph.aget_state(episode.config(episode_id))
        assert snapshot.interrupts  # still waiting for the review

        # Through the watcher's own loop, once its retry is due, it goes on.
        rig.book.review_retry_at[episode_id] = time.monotonic() - 1.0
        await watch_until(rig, lambda: rig.bus.pending(TASKS.name, GROUP) == 0)
        assert episode.refine_calls == 1
        assert rig.unacked_reviews() == 0
        assert rig.review_acks() == [[f"{episode_id}:critique"]]
        assert rig.book.paused == set() and rig.book.resuming == set()
        assert rig.watcher.reviews == {}

    asyncio.run(go())


def test_after_the_attempts_a_failing_resume_is_given_up_and_its_review_acked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no backoff: the watcher retries at its next poll
    monkeypatch.setattr("sparring.orchestrator.scheduling.RETRY_BACKOFF_S", 0.0)
    attempts = 3
    episode = Episode(timeouts=1000)  # every resume times out
    rig = Rig(tmp_path, episode, attempts=attempts)

    async def go() -> None:
        episode_id = await rig.pause_episode()
        # A few more polls after the give-up: nothing is resumed or acked again.
        await watch_until(rig, lambda: rig.bus.pending(TASKS.name, GROUP) == 0, polls_after=5)

        assert episode.refine_calls == attempts
        retrying = rig.events("episode.resume_retrying")
        assert [e["attempt"] for e in retrying] == list(range(1, attempts))
        (failed,) = rig.events("episode.failed")
        assert failed["episode_id"] == episode_id and failed["attempts"] == attempts
        # given up: its task done, its review acked exactly once, nothing held
        assert rig.bus.pending(TASKS.name, GROUP) == 0
        assert rig.review_acks() == [[f"{episode_id}:critique"]]
        assert rig.unacked_reviews() == 0
        book = rig.book
        assert book.paused == set() and book.resuming == set()
        assert book.failures == {} and book.review_retry_at == {} and book.outages == {}
        assert rig.watcher.reviews == {}
        assert rig.registry.in_flight == {}
        assert rig.bus.history("episodes") == []  # never finished
        # the acked review is not delivered again
        await rig.watcher._read()
        assert rig.watcher.reviews == {}

    asyncio.run(go())


def test_a_resume_that_found_the_engine_down_forgets_the_outage_once_it_succeeds(
    tmp_path: Path,
) -> None:
    """An unreachable engine spends no attempt (the episode waits for it); once
    the resume succeeds the outage is forgotten, so the run's end does not
    report a finished episode as left retrying."""
    episode = Episode(timeouts=1, error=httpx.ConnectError)
    rig = Rig(tmp_path, episode, attempts=3)

    async def go() -> None:
        episode_id = await rig.pause_episode()
        await rig.watcher._read()
        before = time.monotonic()
        await rig.watcher._resume(episode_id)
        rig.assert_held_for_retry(episode_id, before)
        assert rig.book.outages == {episode_id: 1} and rig.book.failures == {}
        rig.book.review_retry_at[episode_id] = time.monotonic() - 1.0
        await watch_until(rig, lambda: rig.bus.pending(TASKS.name, GROUP) == 0)
        assert episode.refine_calls == 2 and rig.unacked_reviews() == 0
        assert rig.book.outages == {} and rig.book.failures == {}

    asyncio.run(go())
