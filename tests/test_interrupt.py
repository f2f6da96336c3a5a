"""Stopping a run from outside: SIGTERM (kill, systemd, docker stop) ends it as
Ctrl+C does. The engines and the trainer run in sessions of their own, so
nothing but the run's own clean-up stops them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from sparring.process import free_port
from sparring.serving.engine import healthy


def _processes_naming(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue  # gone meanwhile
    return found


def test_sigterm_stops_the_engines_and_the_trainer_the_run_started(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    ports = {"local": free_port(), "learner": free_port()}
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "runs_dir": str(tmp_path / "runs"),
                "models": {"tiny": {"path": str(tiny_model_path)}},
                "engines": {
                    "local": {"port": ports["local"], "threads": 1},
                    "learner": {
                        "port": ports["learner"],
                        "continuous_batching": False,
                        "threads": 1,
                    },
                },
                "roles": {
                    role: {
                        "engine": "learner" if role == "learner" else "local",
                        "model": "tiny",
                        "max_tokens": 8,
                    }
                    for role in ("attacker", "learner", "critic")
                },
                "budget": {"minutes": 10},
                "promotion": {"gate": False},
                "trainer": {"max_length": 64},
            }
        )
    )
    run_dir = tmp_path / "runs" / "stopped"
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sparring",
            "run",
            "--config",
            str(config),
            "--run-id",
            "stopped",
            "--no-progress",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        # started with SIGINT ignored, as a shell's background job is (and as this
        # test's process was, after earlier tests): SIGTERM must still end it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.monotonic() + 240
    while not (run_dir / "trainer.log").is_file() or not _processes_naming(str(run_dir)):
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        assert time.monotonic() < deadline, "the run never started its trainer"
        time.sleep(0.5)
    assert all(healthy(f"http://127.0.0.1:{p}/v1") for p in ports.values())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 130, (tmp_path / "run.log").read_text()
    assert not any(healthy(f"http://127.0.0.1:{p}/v1") for p in ports.values())
    assert _processes_naming(str(run_dir)) == []  # the trainer is gone too
    assert (run_dir / "summary.json").is_file()
    assert "interrupted" in (tmp_path / "run.log").read_text()
