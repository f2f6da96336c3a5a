"""Episode tasks on the bus, split between orchestrators by a consumer group.

Every orchestrator of a run reads the ``tasks`` stream in one group, so each
task (an episode id) is delivered to exactly one of them. When none is waiting,
an orchestrator adds the next one; its id comes from the stream's length, so
two orchestrators adding at once write the same id and the bus keeps one.

A task is acked once its episode is on the bus (or has failed for good). An
orchestrator restarted under the same consumer name gets its unacked tasks
back first and resumes those episodes from their checkpoints; one that never
comes back has its tasks handed to another after ``claim_after_s``.
"""

from __future__ import annotations

import random
import time

from sparring.bus import Bus
from sparring.bus.streams import TASKS, EpisodeTask

STREAM = TASKS.name
GROUP = "orchestrators"


class WorkQueue:
    def __init__(
        self,
        bus: Bus,
        run_id: str,
        consumer: str,
        *,
        limit: int | None = None,
        claim_after_s: float = 3600.0,
    ) -> None:
        self._bus = bus
        self._run_id = run_id
        self.consumer = consumer
        self._limit = limit
        self._claim_after_s = claim_after_s

    def task_id(self, n: int) -> str:
        return f"{self._run_id}-ep{n:05d}"

    def next(self, running: set[str]) -> str | None:
        """The next episode id for this orchestrator (one not in ``running``), or
        None once ``limit`` tasks exist and none is left for it."""
        deadline = time.monotonic() + 60.0
        while True:
            # This consumer's unacked tasks come back first (some are running
            # here now), then stale ones of other consumers, then new ones.
            for d in self._bus.read(
                STREAM,
                GROUP,
                self.consumer,
                count=len(running) + 1,
                claim_after_s=self._claim_after_s,
            ):
                if d.msg_id not in running:
                    return d.msg_id
            n = self._bus.length(STREAM)
            if self._limit is not None and n >= self._limit:
                return None
            task = EpisodeTask(index=n, by=self.consumer)
            if not TASKS.publish(self._bus, self.task_id(n), task):
                # Another orchestrator added it first (and may take it): back off.
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no episode task could be claimed within 60 s ({n=})")
                time.sleep(random.uniform(0.0, 0.05))

    def done(self, episode_id: str) -> None:
        self._bus.ack(STREAM, GROUP, [episode_id])

    def created(self) -> int:
        return self._bus.length(STREAM)
