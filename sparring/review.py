"""Human in the loop: the episodes waiting for a person's verdict, and answering them.

An orchestrator that pauses an episode publishes a ``review_requests`` message;
``sparring review`` publishes the person's ``reviews`` message under the same
id, and the orchestrator holding the episode resumes it from its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from sparring.bus import ARCHIVE_DIR, Bus, BusError, make_bus
from sparring.bus.streams import REVIEW_REQUESTS, REVIEWS
from sparring.config import ConfigError, expand_env
from sparring.redact import MissingSecret, restore
from sparring.schemas import HumanReview, ReviewRequest, review_id


def open_run_bus(run_dir: Path) -> Bus:
    """The bus a run used: its Redis (from the run's config.yaml) or its SQLite file."""
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    data = yaml.safe_load(cfg_file.read_text()) or {}
    try:
        # a password stays out of config.yaml: a ${VAR} reference, or masked
        bus = restore(expand_env(data.get("bus") or {}, cfg_file, "bus"), "bus")
    except ConfigError as err:
        raise BusError(str(err)) from None
    except MissingSecret as err:
        raise BusError(f"{cfg_file}: {err}") from None
    redis_url = bus.get("redis_url")
    sqlite = bus.get("sqlite_path") or run_dir / "bus.sqlite"
    return make_bus(redis_url, sqlite, namespace=run_dir.name, archive_dir=run_dir / ARCHIVE_DIR)


def waiting(bus: Bus) -> list[ReviewRequest]:
    """Requests nobody has answered yet, oldest first."""
    answered = {d.msg_id for d in bus.history(REVIEWS.name)}
    return [
        REVIEW_REQUESTS.parse(d.payload)
        for d in bus.history(REVIEW_REQUESTS.name)
        if d.msg_id not in answered
    ]


def submit(bus: Bus, review: HumanReview) -> bool:
    """Publish a person's verdict; False when that critique was already reviewed."""
    return REVIEWS.publish(bus, review_id(review.episode_id, review.node), review)


def find(requests: list[ReviewRequest], episode: str) -> ReviewRequest:
    hits = [r for r in requests if r.episode_id == episode or r.episode_id.endswith(episode)]
    if len(hits) != 1:
        ids = ", ".join(r.episode_id for r in requests) or "none"
        raise LookupError(
            f"{'no' if not hits else 'more than one'} paused episode matches '{episode}' "
            f"(waiting: {ids})"
        )
    return hits[0]


__all__ = ["HumanReview", "find", "open_run_bus", "submit", "waiting"]
