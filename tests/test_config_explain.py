"""The config documents itself: every field has a description, and
`sparring config explain` / `sparring config schema` show them."""

import json
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from click.testing import CliRunner
from pydantic import BaseModel

from sparring.cli import main
from sparring.config import RunConfig, TrainerConfig


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds, through dict, list, Optional, Union, Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (dict, list, Union, types.UnionType, Annotated):
        return [m for arg in get_args(annotation) for m in _models(arg)]
    return []


def test_every_field_reachable_from_runconfig_has_a_description() -> None:
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [RunConfig]
    missing = []
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            if not (info.description or "").strip():
                missing.append(f"{model.__name__}.{name}")
            todo.extend(_models(info.annotation))
    assert not missing, f"fields without a description: {missing}"
    # the walk reached the nested models: loop's difficulty, promotion's tolerance
    names = {m.__name__ for m in seen}
    assert {"EngineConfig", "ModelSource", "DifficultyConfig", "ToleranceConfig"} <= names


def _explain(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["config", "explain", *args], terminal_width=200)
    return result.exit_code, result.stdout, result.stderr


def test_explain_one_field_prints_its_type_default_and_description() -> None:
    code, out, _ = _explain("trainer.learning_rate")
    assert code == 0
    assert "trainer.learning_rate" in out and "float" in out and "0.0015" in out
    assert str(TrainerConfig.model_fields["learning_rate"].description) in out
    assert "trainer.beta" not in out


def test_explain_a_section_prints_its_fields_only() -> None:
    code, out, _ = _explain("trainer")
    assert code == 0
    assert "trainer.learning_rate" in out and "trainer.lora_r" in out
    assert "loop.concurrency" not in out


def test_explain_a_field_of_a_named_engine_or_any_engine() -> None:
    for query in ("engines.local.port", "engines.*.port"):
        code, out, _ = _explain(query)
        assert code == 0, query
        assert "engines.*.port" in out and "8765" in out and "engines.*.host" not in out


def test_explain_without_a_field_lists_every_section() -> None:
    code, out, _ = _explain()
    assert code == 0
    paths = ["run_name", "engines.*.kind", "roles.*.version", "loop.attacker_difficulty.adapt"]
    for path in [*paths, "promotion.tolerance.degenerate", "swap.keep_versions"]:
        assert path in out


def test_explain_an_unknown_field_names_the_closest_and_exits_2() -> None:
    code, out, err = _explain("trainer.learning_rat")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert "'trainer.learning_rat'" in err and "trainer.learning_rate" in err


def test_schema_is_json_with_properties_and_descriptions(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["config", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert {"trainer", "engines", "loop"} <= set(schema["properties"])
    assert schema["$defs"]["TrainerConfig"]["properties"]["learning_rate"]["description"]
    out = tmp_path / "schema.json"
    result = CliRunner().invoke(main, ["config", "schema", "-o", str(out)])
    assert result.exit_code == 0 and json.loads(out.read_text()) == schema


def test_check_config_works_under_both_names() -> None:
    default = Path(__file__).parent.parent / "configs" / "default.yaml"
    for args in (["check-config"], ["config", "check"]):
        result = CliRunner().invoke(main, [*args, str(default)])
        assert result.exit_code == 0 and "ok" in result.stdout
