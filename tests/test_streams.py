"""The bus's streams, named once (sparring/bus/streams.py), with their records."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sparring.bus import RECORD_STREAMS, make_bus
from sparring.bus.streams import ALL, EPISODES, PROMOTIONS, REVIEW_REQUESTS, TASKS, EpisodeTask
from sparring.workqueue import WorkQueue


def test_every_stream_is_named_once_and_the_record_streams_are_those_read_whole() -> None:
    names = [s.name for s in ALL]
    assert len(names) == len(set(names)) == 7
    assert {EPISODES.name, PROMOTIONS.name, REVIEW_REQUESTS.name} == RECORD_STREAMS
    # every module reaches the bus through these names: no bare stream name left
    root = Path(__file__).resolve().parents[1] / "sparring"
    for path in root.rglob("*.py"):
        if path.name == "streams.py":
            continue
        text = path.read_text()
        for name in names:
            for call in ("history", "publish", "read", "ack", "pending"):
                assert f'{call}("{name}"' not in text, f"{path}: {call}({name!r}) by hand"


def test_a_stream_publishes_its_record_and_parses_it_back(tmp_path: Path) -> None:
    bus = make_bus(None, tmp_path / "bus.sqlite")
    queue = WorkQueue(bus, "r", "me")
    assert queue.next(set()) == "r-ep00000"
    (task,) = TASKS.records(bus)
    assert task == EpisodeTask(index=0, by="me")
    assert not TASKS.publish(bus, "r-ep00000", EpisodeTask(index=0, by="other"))  # once per id
    bus.publish(TASKS.name, "bad", {"index": "zero"})
    with pytest.raises(ValidationError):
        TASKS.records(bus)
    bus.close()
