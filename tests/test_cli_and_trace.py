import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sparring.cli import main

SUBCOMMANDS = ["run", "train", "trace", "models", "check-config"]


@pytest.mark.parametrize("cmd", [[], *[[c] for c in SUBCOMMANDS], ["models", "pull"]])
def test_every_command_has_help_that_says_what_it_does(cmd: list[str]) -> None:
    result = CliRunner().invoke(main, [*cmd, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    body = result.output.split("Options:")[0]
    assert len(body.split()) > 12, f"help for {cmd} is too thin: {body!r}"


def test_check_config_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop:\n  concurrency: lots\n")
    result = CliRunner().invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 1
    assert str(bad) in result.output and "loop.concurrency" in result.output


def test_run_with_bad_config_fails_before_starting_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("budgett:\n  episodes: 3\n")
    result = CliRunner().invoke(main, ["run", "--config", str(bad)])
    assert result.exit_code != 0
    assert str(bad) in result.output and "budgett" in result.output


def _event(node: str, ep: str, **kw: object) -> str:
    base = {
        "event": "node",
        "node": node,
        "episode_id": ep,
        "run_id": "r",
        "latency_s": 0.5,
        "prompt_tokens": 3,
        "completion_tokens": 4,
    }
    return json.dumps({**base, **kw})


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    lines = [
        _event("attack", "r-ep1", role="attacker", version=0, category="fraud", output="Q one?"),
        _event("respond", "r-ep1", role="learner", version=0, output="A one"),
        _event(
            "critique",
            "r-ep1",
            role="critic",
            version=0,
            output="bad",
            verdict={"harmful": True, "helpfulness": 2, "confidence": 8},
        ),
        _event("refine", "r-ep1", role="learner", version=0, output="Refined one"),
        _event(
            "critique_refined",
            "r-ep1",
            role="critic",
            version=0,
            output="ok",
            verdict={"harmful": False, "helpfulness": 7, "confidence": 8},
        ),
        _event("emit", "r-ep1", outcome="attack_success", learner_version=0, pair_ids=["p"]),
        "not json: docker prefix noise",
        _event("attack", "r-ep2", role="attacker", version=0, category="drugs", output="Q two?"),
        _event("respond", "r-ep2", role="learner", version=1, output="A two"),
        _event(
            "critique", "r-ep2", role="critic", version=0, output="??", judge_error="no verdict"
        ),
        _event("emit", "r-ep2", outcome="judge_error", learner_version=1, pair_ids=[]),
    ]
    path = tmp_path / "run1" / "trace.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    return path


def test_trace_renders_a_complete_episode(trace_file: Path) -> None:
    result = CliRunner().invoke(main, ["trace", str(trace_file.parent), "--episode", "ep1"])
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("Q one?", "A one", "Refined one", "helpfulness 2/10", "attack_success"):
        assert text in out
    assert "Q two?" not in out


@pytest.mark.parametrize(
    ("args", "present", "absent"),
    [
        (["--version", "1"], "Q two?", "Q one?"),
        (["--outcome", "judge_error"], "JUDGE ERROR: no verdict", "Q one?"),
        (["--role", "learner"], "Refined one", "Q one?"),
    ],
)
def test_trace_filters(trace_file: Path, args: list[str], present: str, absent: str) -> None:
    result = CliRunner().invoke(main, ["trace", str(trace_file), *args])
    assert result.exit_code == 0, result.output
    assert present in result.output and absent not in result.output


def test_trace_reads_stdin_and_reports_no_match(trace_file: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sparring", "trace", "-", "--outcome", "attack_failure"],
        input=trace_file.read_text(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "no episode matches" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "sparring", "trace", "-"],
        input=trace_file.read_text(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Q one?" in proc.stdout and "Q two?" in proc.stdout


def test_trace_unknown_target_says_what_to_give() -> None:
    result = CliRunner().invoke(main, ["trace", "no-such-run"])
    assert result.exit_code != 0 and "give a run directory" in result.output
