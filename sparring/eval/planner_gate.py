"""The planner gate: a new planner version is promoted (hot-swapped in) only
if its plans, solved by a frozen learner, make wholes the verifier prefers to
the learner's direct answers about as often as the serving planner's do.

**Tasks.** The same fixed tasks for every version measured: the first
``tasks`` of the decompose graph's shipped set (``decompose_set.jsonl``), each
planned ``samples`` times by the version at the planner's sampling temperature
(what the loop serves), cut to ``loop.max_subtasks`` parts.

**The frozen learner** is the learner's base model (version 0), answering
greedily: it solves each subtask on its own and answers each whole task
directly, so every planner version of a run is measured with the same solver
(and the learner's own progress cannot pass for the planner's). The direct
answer and its verdict are measured once per task and shared by every plan
and every version: two versions' figures then differ by their plans alone.

**One plan** goes as in the decompose graph: the critic (or the loop.critics
panel) scores each solved part, the version recomposes the parts into one
answer, and the verifier judges that whole (a plan that cannot be read has no
parts and no whole).

**Success** is the planner pairs' definition
(:func:`sparring.training.planner_pairs.plan_status`): the whole judged
harmless and at least ``margin`` more helpful than the direct answer; a plan
that cannot be read, a harmful whole or a less helpful one fails; a verdict
that cannot be read, or a whole within the margin, gives no outcome.
``success`` is over the plans with an outcome, and has no figure when fewer
than half have one (the gate never promotes blind).

Reported beside it, not gated: ``plan_errors`` (the share of plans that could
not be read), ``gap`` (mean part helpfulness minus the whole's, per plan,
averaged: :attr:`sparring.schemas.Decomposition.gap`) and ``judge_errors``
(plans a judge error left without an outcome).

The decision is :func:`sparring.eval.gate.decide` over ``success`` against
the serving planner's figures (measured once per version, reused), published
on the ``promotions`` stream with ``role: planner``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sparring.agents.learner import Learner
from sparring.agents.planner import Planner
from sparring.bus import Bus
from sparring.eval.gate import Tracking
from sparring.eval.probe_gate import ProbeGate, success_rate
from sparring.graphs.api import model_ref
from sparring.llm import Binding
from sparring.schemas import Critique, Decomposition, Part
from sparring.training.planner_pairs import MARGIN, Status, plan_status

PLANNER = Tracking(
    names=("success",),
    lower_is_better={"success": False},
    full_range={"success": 1.0},
    percent=frozenset({"success"}),
    digits={},
)

# (task or subtask, answer) -> a judgement of the answer
Judge = Callable[[str, str], Awaitable[Critique]]


@dataclass(frozen=True)
class Probe:
    """One plan written for the gate, what came of it, and what it counts as."""

    task: str
    decomposition: Decomposition
    direct: Critique  # the verifier's judgement of the frozen learner's direct answer
    status: Status
    reason: str

    @property
    def judge_error(self) -> bool:
        """No outcome because a verdict plan_status needed could not be read."""
        whole = self.decomposition.whole_critique
        unread = whole is None or whole.verdict is None or self.direct.verdict is None
        return self.status == "none" and unread


class PlannerGate(ProbeGate[Probe]):
    """Measures planner versions on fixed tasks solved by a frozen learner and
    decides on candidates; figures of versions decided before (this run, on
    the bus) are reused, not re-measured."""

    tracking = PLANNER
    event = "planner_gate.measured"
    unit = "plans"
    opponent = "solved by the frozen base learner"

    def __init__(
        self,
        tasks: Sequence[str],
        planner: Planner,
        learner: Learner,
        frozen: Binding,
        judge: Judge,
        verify: Judge,
        tolerance: Any,
        bus: Bus,
        log: Any,
        *,
        samples: int = 2,
        max_parts: int = 3,
        margin: int = MARGIN,
        concurrency: int = 4,
        role: str = "planner",
    ) -> None:
        """``planner``: built as the loop builds it (its served temperature);
        ``learner``/``frozen``: the greedy solver and the base version it asks;
        ``judge``: the parts' critic(s); ``verify``: the verifier of wholes and
        direct answers."""
        super().__init__(tolerance, bus, log, role)
        self.tasks = list(tasks)
        self.samples = samples
        self.max_parts = max_parts
        self.margin = margin
        self._planner = planner
        self._learner = learner
        self._frozen = frozen
        self._judge = judge
        self._verify = verify
        self._sem = asyncio.Semaphore(concurrency)
        self.direct: dict[str, Critique] = {}

    @property
    def size(self) -> int:
        """Plans per measurement."""
        return len(self.tasks) * self.samples

    async def probe(self, binding: Binding) -> list[Probe]:
        await self.answer_directly()
        jobs = [self._probe(binding, t) for _ in range(self.samples) for t in self.tasks]
        return list(await asyncio.gather(*jobs))

    async def answer_directly(self) -> None:
        """The frozen learner's direct answer to each task not yet answered, and
        the verifier's judgement of it (kept for every later plan and version)."""

        async def one(task: str) -> None:
            async with self._sem:
                answer = await self._learner.respond(self._frozen, task)
                self.direct[task] = await self._verify(task, answer.text)

        await asyncio.gather(*(one(t) for t in dict.fromkeys(self.tasks) if t not in self.direct))

    async def _probe(self, binding: Binding, task: str) -> Probe:
        async with self._sem:
            d = await self.decompose(binding, task)
        direct = self.direct[task]
        status, reason = plan_status(d.plan_error, d.whole_critique, direct, self.margin)
        return Probe(task, d, direct, status, reason)

    async def decompose(self, binding: Binding, task: str) -> Decomposition:
        """The planner ``binding``'s plan for ``task``, its parts solved by the
        frozen learner and judged, recomposed and verified, as the decompose
        graph goes (an unreadable plan stops at the plan)."""
        plan = await self._planner.plan(binding, task, self.max_parts)
        parts: list[Part] = []
        whole, verdict = "", None
        if not plan.error and plan.subtasks:
            solved = (self._part(i, sub) for i, sub in enumerate(plan.subtasks))
            parts = list(await asyncio.gather(*solved))
            notes = [(p.subtask, p.answer) for p in parts]
            whole = (await self._planner.recompose(binding, task, notes)).text
            verdict = await self._verify(task, whole)
        return Decomposition(
            plan=plan.text,
            planner=model_ref(binding),
            parts=parts,
            plan_error=plan.error,
            whole_answer=whole,
            whole_critique=verdict,
        )

    async def _part(self, index: int, subtask: str) -> Part:
        answer = (await self._learner.respond(self._frozen, subtask)).text
        critique = await self._judge(subtask, answer)
        return Part(
            index=index,
            subtask=subtask,
            answer=answer,
            solver=model_ref(self._frozen),
            critique=critique,
        )

    def figures_of(self, probes: Sequence[Probe]) -> dict[str, float | None]:
        if not probes:
            return {"success": None, "plan_errors": None, "gap": None, "judge_errors": 0.0}
        gaps = [g for p in probes if (g := p.decomposition.gap) is not None]
        errors = sum(bool(p.decomposition.plan_error) for p in probes)
        return {
            "success": success_rate([p.status for p in probes]),
            "plan_errors": round(errors / len(probes), 4),
            "gap": round(sum(gaps) / len(gaps), 3) if gaps else None,
            "judge_errors": float(sum(p.judge_error for p in probes)),
        }
