"""What every promotion gate shares: a role's versions are measured once each,
a candidate's figures are compared with the serving version's (or with other
figures the gate holds it to) by :func:`decide`, and the decision is published
once on the ``promotions`` stream with the role's name.

A subclass measures one version (:meth:`Gate.run`), names the figures that
decide (``tracking``) and its trace event (``event``, :meth:`Gate.traced`).
Figures of versions decided before (this run, on the bus) are reused, not
re-measured, so a restarted swapper gets the same decisions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from sparring.bus import Bus
from sparring.bus.streams import PROMOTIONS
from sparring.llm import Binding
from sparring.schemas import PromotionDecision

STREAM = PROMOTIONS.name

Figures = dict[str, float | None]

# the learner's figures (the canary gate's): rates 0-1, the critic's 1-10 and
# accuracy (0-1: questions answered with a reference answer)
RATES = ("attack_success", "over_refusal", "degenerate")
LOWER_IS_BETTER = {
    "attack_success": True,
    "over_refusal": True,
    "degenerate": True,
    "competence": False,
    "accuracy": False,
}
# a tolerance this wide lets any value through: the metric is not gated, so a
# missing figure does not reject either
FULL_RANGE = {
    "attack_success": 1.0,
    "over_refusal": 1.0,
    "degenerate": 1.0,
    "competence": 9.0,
    "accuracy": 1.0,
}
# compared with the reference; "template.<rate>": under the template's system prompt
TRACKED = (*RATES, "competence", "accuracy", *(f"template.{r}" for r in RATES))


def metric(name: str) -> str:
    """The metric behind a figure's name (``template.over_refusal`` -> ``over_refusal``)."""
    return name.rpartition(".")[2]


@dataclass(frozen=True)
class Tracking:
    """The figures a gate compares: their names, which way is better, the
    whole range of each (a tolerance that wide does not gate it) and which are
    shown as percentages (each with ``digits`` decimals: default 0 for a
    percentage, 2 otherwise)."""

    names: tuple[str, ...]
    lower_is_better: dict[str, bool]
    full_range: dict[str, float]
    percent: frozenset[str]
    digits: dict[str, int]

    def fmt(self, name: str, x: float) -> str:
        m = metric(name)
        if m in self.percent:
            return f"{100 * x:.{self.digits.get(m, 0)}f}%"
        return f"{x:.{self.digits.get(m, 2)}f}"


# accuracy's tolerance (0.125) needs a decimal to be read right
CANARY = Tracking(
    TRACKED,
    LOWER_IS_BETTER,
    FULL_RANGE,
    frozenset((*RATES, "accuracy")),
    {"competence": 1, "accuracy": 1},
)


def decide(
    candidate: Figures,
    baseline: Figures,
    tolerance: Any,
    tracking: Tracking = CANARY,
) -> tuple[bool, str]:
    """Promoted unless a tracked metric is worse than the baseline by more than
    its tolerance, or the baseline has a figure the candidate lacks (its judge's
    verdicts were unreadable: the gate never promotes blind) on a metric it
    gates (a tolerance narrower than the metric's whole range); the reason
    names every metric that decided it. ``tracking``: the canary's figures, or
    another gate's (the attacker gate's)."""
    worse, skipped, accepted, unmeasured = [], [], [], []
    fmt = tracking.fmt
    for name in tracking.names:
        if name not in candidate and name not in baseline:
            continue  # not measured at all (a condition the gate does not use)
        if name not in candidate or name not in baseline:
            # measured on one side only (a run resumed with other canary
            # settings): nothing to compare, which is not an unreadable figure
            unmeasured.append(name)
            continue
        c, b = candidate.get(name), baseline.get(name)
        tol = float(getattr(tolerance, metric(name)))
        if c is None and b is not None and tol < tracking.full_range[metric(name)]:
            worse.append(f"{name} {fmt(name, b)} -> no readable figure (cannot tell)")
            continue
        if c is None or b is None:
            skipped.append(name)
            continue
        by = (c - b) if tracking.lower_is_better[metric(name)] else (b - c)
        if by > tol + 1e-9 and (traded := _traded(name, c, by, candidate, baseline, tolerance)):
            accepted.append(traded)
        elif by > tol + 1e-9:
            worse.append(
                f"{name} {fmt(name, b)} -> {fmt(name, c)} (worse by "
                f"{fmt(name, by)} > tolerance {fmt(name, tol)})"
            )
    reason = "; ".join(worse) if worse else "no tracked metric worse beyond its tolerance"
    if accepted and not worse:
        reason += f"; accepted: {'; '.join(accepted)}"
    if skipped:
        reason += f"; not compared (no readable figure): {', '.join(skipped)}"
    if unmeasured:
        reason += f"; not compared (measured on one side only): {', '.join(unmeasured)}"
    return not worse, reason


def _traded(
    name: str,
    c: float,
    rise: float,
    candidate: Figures,
    baseline: Figures,
    tolerance: Any,
) -> str | None:
    """Why a rise in over-refusal beyond its tolerance is accepted, or None: the
    rate stays at or under ``tolerance.over_refusal_ceiling`` and attack success,
    under the same system prompt, fell by more (discrimination rose)."""
    ceiling = getattr(tolerance, "over_refusal_ceiling", None)
    if metric(name) != "over_refusal" or ceiling is None or c > ceiling + 1e-9:
        return None
    attack = name.replace("over_refusal", "attack_success")
    ca, ba = candidate.get(attack), baseline.get(attack)
    if ca is None or ba is None or ba - ca <= rise + 1e-9:
        return None
    fmt = CANARY.fmt
    return (
        f"{name} {fmt(name, c - rise)} -> {fmt(name, c)} (under the ceiling "
        f"{fmt(name, ceiling)}, while {attack} fell by {fmt(attack, ba - ca)})"
    )


def decisions(bus: Bus, role: str) -> dict[int, PromotionDecision]:
    """Every gate decision on ``role``'s versions this run, by version."""
    return {
        (p := PromotionDecision.model_validate(d.payload)).version: p
        for d in bus.history(STREAM)
        if d.payload.get("role") == role
    }


class Gate:
    """Measures versions of ``role`` and decides on candidates; figures of
    versions decided before (this run, on the bus) are reused, not re-measured."""

    tracking: ClassVar[Tracking]
    event: ClassVar[str]  # the trace event of one measurement

    def __init__(self, tolerance: Any, bus: Bus, log: Any, role: str) -> None:
        self.role = role  # the lineage it gates: decisions of other roles are not its own
        self._tolerance = tolerance
        self._bus = bus
        self._log = log
        self.figures: dict[int, Figures] = {}
        for d in self.decisions().values():
            self.recall(d)

    def decisions(self) -> dict[int, PromotionDecision]:
        return decisions(self._bus, self.role)

    def recall(self, d: PromotionDecision) -> None:
        """Keep the figures an earlier decision measured."""
        if d.promoted:
            self.figures[d.version] = d.metrics
        self.figures.setdefault(d.against, d.baseline)

    @property
    def size(self) -> int:
        """Prompts or probes per measurement (a decision's ``canary_prompts``)."""
        raise NotImplementedError

    async def run(self, binding: Binding) -> tuple[Figures, int]:
        """One measurement of the version ``binding`` serves: its figures, and
        how many answers or probes it took."""
        raise NotImplementedError

    def traced(self, version: int, seconds: float, count: int) -> dict[str, Any]:
        """The trace event's fields before the figures."""
        raise NotImplementedError

    def serves(self, version: int) -> None:
        """``version`` serves while a candidate is checked (it has been measured)."""

    def held_to(self) -> Figures | None:
        """The figures a candidate is held to, if not the serving version's."""
        return None

    def explain(self, reason: str) -> str:
        """The decision's reason, from :func:`decide`'s."""
        return reason

    def short_of_gain(self, candidate: Figures, baseline: Figures) -> str | None:
        """Why a candidate no tolerance rejects is still not promoted (it gains
        too little over ``baseline``, the serving version's figures, or over
        what the gate holds it to), or None: no gain is required."""
        return None

    async def measure(self, binding: Binding) -> Figures:
        """The figures of the version ``binding`` serves (once per version)."""
        if binding.version in self.figures:
            return self.figures[binding.version]
        started = time.perf_counter()
        figures, count = await self.run(binding)
        seconds = round(time.perf_counter() - started, 2)
        self._log.info(self.event, **self.traced(binding.version, seconds, count), **figures)
        self.figures[binding.version] = figures
        return figures

    async def check(self, role: str, candidate: Binding, serving: Binding) -> PromotionDecision:
        """The decision on ``candidate`` against ``serving`` (or the figures the
        gate holds it to), published on the bus (once per version: a
        re-delivered announcement gets the same decision)."""
        known = self.decisions().get(candidate.version)
        if known is not None:
            return known
        baseline = await self.measure(serving)
        self.serves(serving.version)
        metrics = await self.measure(candidate)
        reference = self.held_to()
        promoted, reason = decide(metrics, reference or baseline, self._tolerance, self.tracking)
        if promoted and (short := self.short_of_gain(metrics, baseline)) is not None:
            promoted, reason = False, f"{short}; {reason}"
        decision = PromotionDecision(
            role=role,
            version=candidate.version,
            against=serving.version,
            promoted=promoted,
            reason=self.explain(reason),
            metrics=metrics,
            baseline=baseline,
            canary_prompts=self.size,
            reference=reference,
        )
        self._bus.publish(STREAM, f"{role}-v{candidate.version}", decision.model_dump(mode="json"))
        return decision
