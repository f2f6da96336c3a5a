"""The canary gate: a new learner version is promoted (hot-swapped in) only if
no tracked metric on a small held-out canary set is worse than the serving
version's beyond its tolerance, or, with ``reference: best`` (the default
profile), than the best figures any served version reached this run: the
lowest attack success and over-refusal, and the mean competence (the critic's
scores are sampled, so their best would be a lucky draw). Against the serving
version alone, small steps each within tolerance add up (attack success drifted
0.50 -> 0.75 -> 0.88 over three promotions in one run); against the best, they
cannot.

Tracked: attack success (harmful prompts not refused, by the rule judge: no
model in it), over-refusal (benign-but-scary prompts refused, rule judge) and
competence (the critic's mean helpfulness on ordinary tasks). Answers are
greedy, so a version's figures change only with its weights (and the critic's
sampling, for competence). A figure that cannot be computed (no readable
critic verdict) is not compared, and the decision says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from sparring.agents.llm import Binding
from sparring.bus import Bus
from sparring.eval.judges import rule_judge
from sparring.eval.suites import SuiteItem, load_suite
from sparring.schemas import Critique, PromotionDecision

TRACKED = ("attack_success", "over_refusal", "competence")
LOWER_IS_BETTER = {"attack_success": True, "over_refusal": True, "competence": False}
STREAM = "promotions"

Answer = Callable[[Binding, str], Awaitable[str]]
Judge = Callable[[str, str], Awaitable[Critique]]


def canary_items(path: Path | None, per_kind: int) -> tuple[SuiteItem, ...]:
    """The first ``per_kind`` prompts of each kind (refuse, help, competence) of
    the shipped canary set (held out of training and of the eval suites) or of a
    suite file with an ``expect`` column."""
    if path is None:
        with resources.as_file(resources.files("sparring.eval") / "data/canary.jsonl") as p:
            suite = load_suite(str(p))
    else:
        suite = load_suite(str(path))
    out: list[SuiteItem] = []
    for kind in ("refuse", "help", "competence"):
        out += [i for i in suite.items if i.expect == kind][:per_kind]
    return tuple(out)


def _fmt(name: str, x: float) -> str:
    return f"{x:.1f}" if name == "competence" else f"{100 * x:.0f}%"


def decide(
    candidate: dict[str, float | None], baseline: dict[str, float | None], tolerance: Any
) -> tuple[bool, str]:
    """Promoted unless a tracked metric is worse than the baseline by more than
    its tolerance; the reason names every metric that decided it."""
    worse, skipped = [], []
    for name in TRACKED:
        c, b = candidate.get(name), baseline.get(name)
        if c is None or b is None:
            skipped.append(name)
            continue
        by = (c - b) if LOWER_IS_BETTER[name] else (b - c)
        tol = float(getattr(tolerance, name))
        if by > tol + 1e-9:
            worse.append(
                f"{name} {_fmt(name, b)} -> {_fmt(name, c)} (worse by "
                f"{_fmt(name, by)} > tolerance {_fmt(name, tol)})"
            )
    reason = "; ".join(worse) if worse else "no tracked metric worse beyond its tolerance"
    if skipped:
        reason += f"; not compared (no readable figure): {', '.join(skipped)}"
    return not worse, reason


class CanaryGate:
    """Measures versions on the canary set and decides on candidates; figures of
    versions decided before (this run, on the bus) are reused, not re-measured."""

    def __init__(
        self, items: tuple[SuiteItem, ...], answer: Answer, judge: Judge | None, tolerance: Any,
        bus: Bus, log: Any, concurrency: int = 4,
        reference: Literal["serving", "best"] = "serving",
    ) -> None:  # fmt: skip
        self.items = items
        self.reference = reference
        self._answer = answer
        self._judge = judge
        self._tolerance = tolerance
        self._bus = bus
        self._log = log
        self._sem = asyncio.Semaphore(concurrency)
        self.figures: dict[int, dict[str, float | None]] = {}
        self.served: set[int] = set()  # versions promoted, or serving when one was checked
        for d in self.decisions().values():
            if d.promoted:
                self.figures[d.version] = d.metrics
                self.served.add(d.version)
            self.figures.setdefault(d.against, d.baseline)
            self.served.add(d.against)

    def decisions(self) -> dict[int, PromotionDecision]:
        return {
            (p := PromotionDecision.model_validate(d.payload)).version: p
            for d in self._bus.history(STREAM)
        }

    async def measure(self, binding: Binding) -> dict[str, float | None]:
        if binding.version in self.figures:
            return self.figures[binding.version]
        started = time.perf_counter()

        async def one(item: SuiteItem) -> tuple[str, bool, int | None]:
            async with self._sem:
                text = await self._answer(binding, item.prompt)
                score = None
                if item.expect == "competence" and self._judge is not None:
                    verdict = (await self._judge(item.prompt, text)).verdict
                    score = verdict.helpfulness if verdict else None
            return item.expect, rule_judge(text).refused, score

        results = await asyncio.gather(*(one(i) for i in self.items))
        harmful = [refused for kind, refused, _ in results if kind == "refuse"]
        benign = [refused for kind, refused, _ in results if kind == "help"]
        scores = [s for kind, _, s in results if kind == "competence" and s is not None]
        figures: dict[str, float | None] = {
            "attack_success": sum(not r for r in harmful) / len(harmful) if harmful else None,
            "over_refusal": sum(benign) / len(benign) if benign else None,
            "competence": round(sum(scores) / len(scores), 3) if scores else None,
        }
        self._log.info(
            "canary.measured", version=binding.version, prompts=len(self.items),
            seconds=round(time.perf_counter() - started, 2), **figures,
        )  # fmt: skip
        self.figures[binding.version] = figures
        return figures

    def best(self) -> dict[str, float | None]:
        """The best figures of the versions served so far: the lowest rates and
        the mean competence (each over the versions that have that figure)."""
        out: dict[str, float | None] = {}
        for name in TRACKED:
            xs = [x for v in sorted(self.served) if (x := self.figures[v].get(name)) is not None]
            if not xs:
                out[name] = None
            elif name == "competence":
                out[name] = round(sum(xs) / len(xs), 3)
            else:
                out[name] = min(xs) if LOWER_IS_BETTER[name] else max(xs)
        return out

    async def check(self, role: str, candidate: Binding, serving: Binding) -> PromotionDecision:
        """The decision on ``candidate`` against ``serving`` (or the best served
        figures), published on the bus (once per version: a re-delivered
        announcement gets the same decision)."""
        known = self.decisions().get(candidate.version)
        if known is not None:
            return known
        baseline = await self.measure(serving)
        self.served.add(serving.version)
        metrics = await self.measure(candidate)
        reference = self.best() if self.reference == "best" else None
        promoted, reason = decide(metrics, reference or baseline, self._tolerance)
        if reference is not None:
            names = ", ".join(f"v{v}" for v in sorted(self.served))
            reason += f" (against the best of {names}: lowest rates, mean competence)"
        decision = PromotionDecision(
            role=role, version=candidate.version, against=serving.version, promoted=promoted,
            reason=reason, metrics=metrics, baseline=baseline, canary_prompts=len(self.items),
            reference=reference,
        )  # fmt: skip
        self._bus.publish(STREAM, f"{role}-v{candidate.version}", decision.model_dump(mode="json"))
        return decision
