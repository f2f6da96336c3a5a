"""Progress: what a run has done so far, and the bars that show it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from sparring.bus import Bus
from sparring.bus.streams import PAIRS
from sparring.config import RunConfig
from sparring.schemas import Episode, PreferencePair
from sparring.serving.registry import Registry
from sparring.training.worker import GROUP as TRAINER_GROUP


@dataclass
class Counters:
    episodes: int = 0
    pairs: int = 0
    judge_errors: int = 0
    by_version: dict[int, int] = field(default_factory=dict)
    pair_kinds: dict[str, int] = field(default_factory=dict)

    def add(self, episode: Episode, pairs: list[PreferencePair]) -> None:
        self.episodes += 1
        self.pairs += len(pairs)
        self.judge_errors += episode.outcome == "judge_error"
        v = episode.learner.version
        self.by_version[v] = self.by_version.get(v, 0) + 1
        for p in pairs:
            self.pair_kinds[p.kind] = self.pair_kinds.get(p.kind, 0) + 1


@dataclass
class Bars:
    """The four bars of a run: episodes, pairs, training, learner version."""

    bar: Progress
    pairs_per_version: int | None  # None: one round, the final version takes them all
    episodes: TaskID
    pairs: TaskID
    training: TaskID
    version: TaskID

    def update(self, bus: Bus, registry: Registry, counters: Counters) -> None:
        c = counters
        waiting = bus.pending(PAIRS.name, TRAINER_GROUP)
        per = self.pairs_per_version or waiting
        version = registry.binding("learner").version
        self.bar.update(self.episodes, completed=c.episodes, note=f"judge errors {c.judge_errors}")
        self.bar.update(self.pairs, completed=c.pairs, note="preference pairs emitted")
        self.bar.update(
            self.training, completed=min(waiting, per), note=f"pairs queued for v{version + 1}"
        )
        self.bar.update(self.version, completed=version, note=f"serving v{version}")


def make_progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )


@contextmanager
def progress_bars(cfg: RunConfig, console: Console, enabled: bool) -> Iterator[Bars]:
    """The run's bars, shown while the block runs (hidden when not ``enabled``)."""
    with make_progress(console, enabled) as bar:
        yield Bars(
            bar,
            cfg.trainer.pairs_per_version,
            episodes=bar.add_task("episodes", total=cfg.budget.episodes, note=""),
            pairs=bar.add_task("pairs", total=None, note=""),
            training=bar.add_task("training", total=cfg.trainer.pairs_per_version, note=""),
            version=bar.add_task("learner version", total=cfg.budget.learner_versions, note=""),
        )
