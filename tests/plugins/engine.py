"""A real `transformers serve` engine process for the tests (one per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sparring.config import EngineConfig
from sparring.process import free_port
from sparring.serving.engine import EngineProcess


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineConfig]:
    cfg = EngineConfig(port=free_port(), startup_timeout_s=120)
    log = Path(tmp_path_factory.mktemp("engine")) / "engine.log"
    with EngineProcess("test", cfg, log):
        yield cfg


@pytest.fixture(scope="session")
def seq_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineConfig]:
    """An engine without continuous batching: it keeps several models (a learner's
    versions) loaded and serves each with its own generator, as the learner's
    engine does in a run."""
    cfg = EngineConfig(port=free_port(), continuous_batching=False, startup_timeout_s=120)
    log = Path(tmp_path_factory.mktemp("seq-engine")) / "engine.log"
    with EngineProcess("test-seq", cfg, log):
        yield cfg


@pytest.fixture(scope="session")
def seq_engine_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineConfig]:
    """A second learner engine: a replica of ``seq_engine`` for the hot-swap tests."""
    cfg = EngineConfig(port=free_port(), continuous_batching=False, startup_timeout_s=120)
    log = Path(tmp_path_factory.mktemp("seq-engine-b")) / "engine.log"
    with EngineProcess("test-seq-b", cfg, log):
        yield cfg
