"""The bad-input catalogue: each malformed config, prompt file, bus file and
model folder is refused with one line naming the file, the field or row and
what to do, before anything starts, and nothing already stored is changed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sparring.agents.prompts import load_prompt_set
from sparring.bus import make_bus
from sparring.cli import main
from sparring.config import ConfigError, load_config
from sparring.graphs import load_run_config
from sparring.graphs.checkpoints import CheckpointError, check_checkpoints
from sparring.serving.models import resolve_model_path


def unmanaged_config(tmp_path: Path, **models: dict[str, str]) -> Path:
    """A run config whose engine sparring does not start (and which does not
    answer), so a run that got past the check would fail within a second."""
    models = models or {"m": {"hub_id": "org/model"}}
    model = next(iter(models))
    cfg = {
        "run_name": "bad",
        "runs_dir": str(tmp_path / "runs"),
        "models": models,
        "engines": {
            "e": {
                "kind": "external",
                "managed": False,
                "base_url": "http://127.0.0.1:9/v1",
                "startup_timeout_s": 1,
            },
        },
        "roles": {r: {"engine": "e", "model": model} for r in ("attacker", "learner", "critic")},
        "trainer": {"managed": False},
        "promotion": {"gate": False},
        "budget": {"episodes": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def one_line_error(result: Result, *names: str) -> str:
    """The command failed as a usage error (no traceback) with one line that
    names each of ``names``; returns that line."""
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (1, 2) and "Traceback" not in result.output
    errors = [x for x in result.output.splitlines() if x.startswith("Error")]
    assert len(errors) == 1, result.output
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


# -- bus files ---------------------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a database at all\n" * 200)


def _truncated(path: Path) -> None:
    bus = make_bus(None, path)
    for i in range(2000):
        bus.publish("episodes", f"ep{i}", {"text": "x" * 200})
    bus.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_garbage, _truncated], ids=["garbage", "truncated"])
def test_a_damaged_bus_file_is_refused_and_left_as_it_was(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    path = tmp_path / "bus.sqlite"
    damage(path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError) as err:  # BusError
        make_bus(None, path)
    msg = str(err.value)
    assert str(path) in msg and "move it aside" in msg and "\n" not in msg
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bus.sqlite"]  # no -wal, no -shm


def test_a_bus_path_naming_a_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"a folder, not a SQLite file; bus.sqlite_path"):
        make_bus(None, tmp_path)


def test_commands_on_a_run_with_a_damaged_bus_print_one_line(tmp_path: Path) -> None:
    cfg = unmanaged_config(tmp_path)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    bus_file = run_dir / "bus.sqlite"
    _garbage(bus_file)
    before = bus_file.read_bytes()
    runner = CliRunner()
    result = runner.invoke(main, ["run", "-c", str(cfg), "--run-id", "r1", "--no-progress"])
    one_line_error(result, str(bus_file), "not a readable SQLite bus", "move it aside")
    # run wrote run_dir/config.yaml: review and report read the run from it
    for args in (
        ["review", str(run_dir), "--list"],
        ["report", str(run_dir), "--no-embeddings", "--no-progress"],
        ["train", "-c", str(cfg), "--run-dir", str(run_dir)],
    ):
        one_line_error(runner.invoke(main, args), str(bus_file), "move it aside")
    assert bus_file.read_bytes() == before


def test_a_run_whose_pairs_from_names_itself_or_no_run_stops_before_it_starts(
    tmp_path: Path,
) -> None:
    """trainer.pairs_from is checked by `sparring run` before any engine or the
    trainer starts: the run itself would count its own pairs twice in the
    balance rule, and a missing run would stop the trainer mid-run. A trainer
    on another machine (trainer.managed false) may see runs this one does not."""
    cfg = unmanaged_config(tmp_path)
    earlier = tmp_path / "runs" / "r0"
    earlier.mkdir(parents=True)
    (earlier / "config.yaml").write_text(cfg.read_text())

    def run(run_id: str, names: str, managed: bool) -> Result:
        sets = [f"trainer.pairs_from={names}", "trainer.lineage=rebuild"]
        sets.append(f"trainer.managed={str(managed).lower()}")
        args = ["run", "-c", str(cfg), "--run-id", run_id, "--no-progress"]
        return CliRunner().invoke(main, args + [x for s in sets for x in ("--set", s)])

    for run_id, names, managed, says in (
        ("r1", "[r1]", False, "the run itself"),
        ("r2", "[gone]", True, "holds no run"),
        ("r3", "[r0, r3]", True, "the run itself"),
    ):
        one_line_error(run(run_id, names, managed), "trainer.pairs_from", says)
        assert not (tmp_path / "runs" / run_id / "config.yaml").exists()  # nothing started
    # past the check, these fail on the engine that does not answer
    for run_id, names, managed in (("r4", "[r0]", True), ("r5", "[gone]", False)):
        line = one_line_error(run(run_id, names, managed))
        assert "pairs_from" not in line and "127.0.0.1:9" in line, line


# -- checkpoint files ----------------------------------------------------------------


def test_a_run_with_a_damaged_checkpoint_file_prints_one_line(tmp_path: Path) -> None:
    cfg = unmanaged_config(tmp_path)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    checkpoints = run_dir / "checkpoints.sqlite"
    _garbage(checkpoints)
    before = checkpoints.read_bytes()
    result = CliRunner().invoke(main, ["run", "-c", str(cfg), "--run-id", "r1", "--no-progress"])
    one_line_error(result, str(checkpoints), "not a readable LangGraph checkpoint", "move it aside")
    assert checkpoints.read_bytes() == before


def _checkpoints(path: Path, n: int = 300) -> None:
    """A LangGraph checkpoint file as the orchestrator writes it."""
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.sqlite import SqliteSaver

    with SqliteSaver.from_conn_string(str(path)) as saver:
        for i in range(n):
            config = {"configurable": {"thread_id": f"ep{i}", "checkpoint_ns": ""}}
            cp = empty_checkpoint()
            cp["channel_values"] = {"query": "x" * 300}
            saver.put(config, cp, {"step": 1}, {})


def test_a_readable_or_missing_checkpoint_file_passes(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    check_checkpoints(path)  # a fresh run: nothing yet
    assert not path.exists()
    _checkpoints(path)
    before = path.read_bytes()
    check_checkpoints(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_checkpoint_file_is_one_line_and_left_as_it_was(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "checkpoints-o2.sqlite"
    if damage == "garbage":
        _garbage(path)
    else:
        _checkpoints(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as err:
        check_checkpoints(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: not a readable LangGraph checkpoint file")
    assert "move it aside" in msg and "\n" not in msg
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no -wal, no -shm


def test_a_checkpoint_path_naming_a_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"a folder where the orchestrator keeps"):
        check_checkpoints(tmp_path)


# -- --set --------------------------------------------------------------------------


def test_set_below_a_value_names_the_flag_and_the_value() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"loop.graph.x": 1})
    assert str(err.value) == (
        "--set loop.graph.x: loop.graph is a single value, not a section with fields; "
        "set loop.graph=VALUE instead"
    )
    with pytest.raises(ConfigError, match=r"--set loop.critics.0: loop.critics is a list"):
        load_config(None, {"loop.critics.0": "critic"})
    # a section the file leaves empty (null) starts from its defaults
    assert load_config(None, {"budget": None, "budget.episodes": 3}).budget.episodes == 3


def test_set_errors_on_the_command_line_print_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--set", "loop.graph.x=1"])
    one_line_error(result, "--set loop.graph.x", "set loop.graph=VALUE")
    result = runner.invoke(main, ["run", "--set", "loop.concurrency=[1"])
    assert result.exit_code == 2
    one_line_error(result, "--set", "loop.concurrency", "not valid YAML", "quote it")


@pytest.mark.parametrize(
    ("arg", "says"),
    [
        ("loop.concurrency", "has no '='"),
        ("=4", "is not a dotted field name"),
        ("loop..concurrency=4", "is not a dotted field name"),
    ],
)
@pytest.mark.parametrize("command", ["run", "eval"])
def test_set_without_a_field_and_value_shows_the_expected_form(
    tmp_path: Path, command: str, arg: str, says: str
) -> None:
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("{}\n")
    args = ["eval", str(run_dir)] if command == "eval" else ["run"]
    result = CliRunner().invoke(main, [*args, "--set", arg])
    assert result.exit_code == 2
    one_line_error(result, repr(arg), says, "--set section.field=value")


# -- model folders ------------------------------------------------------------------


def _cut(name: str) -> Callable[[Path], None]:
    def cut(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return cut


def _sharded_with_a_shard_missing(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


BROKEN_FOLDERS = {
    "no-weights": (lambda f: (f / "model.safetensors").unlink(), "no weights (model.safetensors"),
    "truncated-weights": (_cut("model.safetensors"), "model.safetensors: truncated ("),
    "weights-header": (
        lambda f: (f / "model.safetensors").write_bytes(b"not weights"),
        "model.safetensors: not a safetensors file (its header cannot be read)",
    ),
    "missing-shard": (
        _sharded_with_a_shard_missing,
        "model-00002-of-00002.safetensors: missing or empty",
    ),
    "no-tokenizer": (lambda f: (f / "tokenizer.json").unlink(), "no tokenizer (tokenizer.json"),
    "truncated-tokenizer": (_cut("tokenizer.json"), "tokenizer.json: cannot be read as JSON"),
    "truncated-config": (_cut("config.json"), "config.json: cannot be read as JSON"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FOLDERS))
def test_an_incomplete_model_folder_is_refused_naming_the_file(
    tiny_model_path: Path, tmp_path: Path, case: str
) -> None:
    folder = shutil.copytree(tiny_model_path, tmp_path / "model")
    assert resolve_model_path(None, folder) == folder.resolve()  # the copy is whole
    breaker, expected = BROKEN_FOLDERS[case]
    breaker(folder)
    with pytest.raises(ValueError) as err:
        resolve_model_path(None, folder)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg
    assert "copy" in msg  # what to do


def test_run_on_a_truncated_model_folder_prints_one_line(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(tiny_model_path, tmp_path / "model")
    _cut("model.safetensors")(folder)
    cfg = unmanaged_config(tmp_path, tiny={"path": str(folder)})
    result = CliRunner().invoke(main, ["run", "-c", str(cfg), "--no-progress"])
    one_line_error(result, "models.tiny.path", str(folder / "model.safetensors"), "truncated")


# -- prompt files -------------------------------------------------------------------


def _prompts_config(tmp_path: Path, prompts: Path) -> Path:
    path = tmp_path / "refine.yaml"
    path.write_text(f"loop: {{graph: self_refine, prompts: {prompts}}}\n")
    return path


def test_a_csv_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    # what spreadsheet programs write for "CSV UTF-8"
    path = tmp_path / "prompts.csv"
    path.write_bytes("prompt,category\nHow do tides work?,science\n".encode("utf-8-sig"))
    items = load_prompt_set(path)
    assert [(i.category, i.prompt) for i in items] == [("science", "How do tides work?")]
    assert load_run_config(_prompts_config(tmp_path, path)).loop.prompts == path


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (["How", "do tides work?"], "a list"),
        (42, "a number"),
        ({"text": "hi"}, "an object"),
        (True, "true/false"),
    ],
)
def test_a_jsonl_prompt_that_is_not_text_is_an_error(
    tmp_path: Path, value: object, kind: str
) -> None:
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "How do tides work?"}, {"prompt": value, "category": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError) as err:
        load_prompt_set(path)
    assert str(err.value).startswith(f"{path}: row 2: 'prompt' is {kind}, not text")
    cfg = _prompts_config(tmp_path, path)
    with pytest.raises(ConfigError) as err2:
        load_run_config(cfg)
    assert f"{cfg}: loop.prompts" in str(err2.value) and f"{path}: row 2: 'prompt'" in str(
        err2.value
    )


def test_a_category_that_is_not_text_is_an_error_and_a_numeric_answer_is_text(
    tmp_path: Path,
) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "2 + 2?", "category": ["maths"]}) + "\n")
    with pytest.raises(ValueError, match=r"row 1: 'category' is a list, not text"):
        load_prompt_set(path)
    path.write_text(json.dumps({"prompt": "2 + 2?", "answer": 4, "wrong_answer": 5}) + "\n")
    (item,) = load_prompt_set(path, required=("answer", "wrong_answer"))
    assert item.fields == {"answer": "4", "wrong_answer": "5"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"Prompt,Category\nHow do tides work?,science\n",
            "no 'prompt' column (its first row names 'Prompt', 'Category')",
        ),
        ("prompt\nHow do tides work?\n".encode("utf-16"), "not UTF-8 text (byte 0)"),
        (b"prompt\n" + b"x" * 200_000 + b"\n", "not a readable CSV file (field larger"),
    ],
    ids=["header", "utf-16", "huge-field"],
)
def test_a_csv_that_cannot_be_read_names_the_file_and_the_fix(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "prompts.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_prompt_set(path)
    assert str(err.value).startswith(f"{path}: {expected}")
    with pytest.raises(ConfigError, match=r"loop.prompts \(graph 'self_refine'\)"):
        load_run_config(_prompts_config(tmp_path, path))
