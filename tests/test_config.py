from pathlib import Path

import pytest

from sparring.bus import make_bus
from sparring.config import ConfigError, RunConfig, load_config
from sparring.graphs import load_run_config
from tests.helpers import env_file

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # compose.yaml reads the environment docker compose gives it from .env
    for key, value in env_file(path.parent.parent / ".env.example").items():
        monkeypatch.setenv(key, value)
    assert isinstance(load_run_config(path), RunConfig)  # with its graph's roles checked


def test_environment_references_expand_with_defaults_and_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARRING_TEST_CONC", "7")
    monkeypatch.delenv("SPARRING_TEST_UNSET", raising=False)
    p = _write(
        tmp_path,
        "loop: {concurrency: '${SPARRING_TEST_CONC}'}\n"
        "budget: {episodes: '${SPARRING_TEST_UNSET:-null}', minutes: '${SPARRING_TEST_UNSET:-5}'}\n"
        "run_name: 'run-${SPARRING_TEST_CONC}-x'\n",
    )
    cfg = load_config(p)
    assert cfg.loop.concurrency == 7 and cfg.budget.episodes is None
    assert cfg.budget.minutes == 5 and cfg.run_name == "run-7-x"
    bad = _write(tmp_path, "run_name: '${SPARRING_TEST_UNSET}'\n")
    with pytest.raises(
        ConfigError, match=r"run.yaml: run_name: environment variable SPARRING_TEST_UNSET"
    ):
        load_config(bad)


def test_default_yaml_matches_builtin_defaults() -> None:
    assert load_config(CONFIGS[0].parent / "default.yaml") == RunConfig()


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_typo_in_field_name_names_file_and_field(tmp_path: Path) -> None:
    p = _write(tmp_path, "trainer:\n  pairs_per_verison: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg
    assert "trainer.pairs_per_verison" in msg
    assert "unknown field" in msg


def test_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    p = _write(tmp_path, "roles:\n  critic: {max_tokens: many}\n  attacker: {}\n  learner: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "roles.critic.max_tokens" in msg and "'many'" in msg


def test_binding_to_undefined_engine_fails(tmp_path: Path) -> None:
    p = _write(tmp_path, "roles:\n  attacker: {engine: gpu0}\n  learner: {}\n  critic: {}\n")
    with pytest.raises(ConfigError, match="roles.attacker.engine names 'gpu0'"):
        load_config(p)


def test_missing_role_fails(tmp_path: Path) -> None:
    p = _write(tmp_path, "roles:\n  attacker: {}\n  learner: {engine: learner}\n")
    with pytest.raises(ConfigError, match=r"run.yaml: roles: graph 'redteam' calls role 'critic'"):
        load_run_config(p)
    no_learner = _write(tmp_path, "roles:\n  attacker: {}\n  critic: {}\n")
    with pytest.raises(ConfigError, match=r"run.yaml: roles: the config does not bind 'learner'"):
        load_run_config(no_learner)


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "roles: [unclosed\n"))


def test_overrides_are_validated_too() -> None:
    assert load_config(None, {"budget.episodes": 5}).budget.episodes == 5
    with pytest.raises(ConfigError, match="budget.episodes"):
        load_config(None, {"budget.episodes": 0})


def test_a_batching_engine_is_never_bound_to_two_models_or_the_learner() -> None:
    other = {"models.other": {"path": "/data/other"}, "roles.critic.model": "other"}
    with pytest.raises(ConfigError, match=r"engines.local .*roles \['attacker', 'critic'\]"):
        load_config(None, other)
    mid_run = {"trainer.pairs_per_version": 8}  # versions mid-run overlap on the engine
    with pytest.raises(ConfigError, match="bind it to an engine with continuous_batching: false"):
        load_config(None, mid_run)
    # a trained role's versions would be served to every role on its engine
    shared = r"roles.{} is trained \(trainer.roles\) and shares it with \[{}\]"
    with pytest.raises(ConfigError, match=shared.format("learner", "'attacker', 'critic'")):
        load_config(None, {"roles.learner.engine": "local"})
    with pytest.raises(ConfigError, match=shared.format("attacker", "'critic'")):
        load_config(None, {"trainer.roles": ["learner", "attacker"]})
    # Without continuous batching an engine keeps several models loaded: fine.
    cfg = load_config(None, {**other, "engines.local.continuous_batching": False})
    assert cfg.roles["critic"].model == "other"


def test_an_override_changes_one_field_of_a_section_the_file_left_out() -> None:
    cfg = load_config(None, {"roles.critic.max_tokens": 20})
    assert cfg.roles["critic"].max_tokens == 20
    assert cfg.roles["learner"] == RunConfig().roles["learner"]


@pytest.mark.parametrize(
    "name", ["default", "redis", "separate-judge", "debate", "decompose", "coevolve"]
)
def test_every_shipped_config_loads(name: str) -> None:
    """configs/compose.yaml needs the compose env; test_compose.py loads it."""
    from sparring.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "configs" / f"{name}.yaml")
    assert cfg.roles["learner"].engine == "learner"


def test_the_canary_engine_is_checked_where_named_and_optional_by_default(tmp_path: Path) -> None:
    # the default profile answers the canary on its own batching engine
    assert RunConfig().promotion.engine == "canary" and "canary" in RunConfig().engines
    # a config with engines of its own (or a run written before the canary engine)
    # answers it on the learner's engine, as before
    own = tmp_path / "own.yaml"
    own.write_text(
        "engines:\n  local: {port: 8765}\n  learner: {port: 8766, continuous_batching: false}\n"
    )
    assert load_config(own).promotion.engine is None
    # named explicitly but not defined: the file, the field and what to do
    own.write_text(own.read_text() + "promotion: {engine: canary}\n")
    with pytest.raises(
        ConfigError, match=r"(?s)own.yaml.*promotion.engine names 'canary'.*add engines"
    ):
        load_config(own)
    # vLLM takes versions as adapters, which the canary engine could not load: by
    # default the canary is answered beside the serving adapter on vLLM itself;
    # named explicitly, the file says what to change
    vllm = {"engines.learner.kind": "vllm", "trainer.publish": "adapter"}
    assert load_config(None, vllm).promotion.engine is None
    with pytest.raises(ConfigError, match=r"promotion.engine 'canary' loads each learner version"):
        load_config(None, {**vllm, "promotion.engine": "canary"})


def test_vllm_engines_check_what_they_can_serve(tmp_path: Path) -> None:
    vllm = {"engines.learner.kind": "vllm"}
    # merged versions of a continued lineage carry a base-relative adapter too
    assert load_config(None, vllm).engines["learner"].swap_mode() == "lora"
    with pytest.raises(ConfigError, match=r"trainer.lineage: fresh stacks each adapter"):
        load_config(None, {**vllm, "trainer.lineage": "fresh"})
    with pytest.raises(
        ConfigError,
        match=r"trainer.lora_r is 32, but engines.learner is started "
        r"with max_lora_rank 16",
    ):
        load_config(None, {**vllm, "trainer.lora_r": 32})
    # one base model per vLLM server
    two = tmp_path / "two.yaml"
    two.write_text(
        "models:\n  smollm2: {builtin: smollm2}\n  other: {path: /tmp/other}\n"
        "engines:\n  v: {kind: vllm}\n"
        "roles:\n  attacker: {engine: v, model: other}\n  learner: {engine: v}\n"
        "  critic: {engine: v}\n"
    )
    with pytest.raises(
        ConfigError, match=r"(?s)two.yaml.*engines.v \(vllm\) serves one base model"
    ):
        load_config(two)


def test_role_adapters_need_a_vllm_engine_and_never_the_learner() -> None:
    with pytest.raises(ConfigError, match=r"roles.critic.adapter needs an engine that loads LoRA"):
        load_config(None, {"roles.critic.adapter": "/tmp/critic-lora"})
    vllm = {"engines.local.kind": "vllm", "engines.learner.kind": "vllm"}
    cfg = load_config(None, {**vllm, "roles.critic.adapter": "/tmp/critic-lora"})
    assert cfg.roles["critic"].adapter == Path("/tmp/critic-lora")
    with pytest.raises(ConfigError, match=r"roles.learner.adapter: the learner's versions"):
        load_config(None, {**vllm, "roles.learner.adapter": "/tmp/l"})


def test_one_round_needs_its_final_version_and_lets_the_learner_engine_batch(
    tmp_path: Path,
) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("trainer: {pairs_per_version: null, final_version: false}\n")
    with pytest.raises(ConfigError, match="pairs_per_version: null trains no version"):
        load_config(p)
    # versions mid-run overlap on the learner's engine: it must not batch
    with pytest.raises(ConfigError, match="or train one round"):
        load_config(None, {"trainer.pairs_per_version": 8})
    p.write_text("trainer: {pairs_per_version: null}\n")
    cfg = load_config(p)
    assert cfg.engines["learner"].continuous_batching and cfg.trainer.final_version
    with pytest.raises(ConfigError, match="set trainer.lineage: rebuild"):
        load_config(None, {"trainer.pairs_from": ["earlier"], "trainer.lineage": "continue"})
    with pytest.raises(ConfigError, match="trainer.pairs_from.0"):
        load_config(None, {"trainer.pairs_from": ["../escape"]})


def test_a_trained_role_needs_a_source_of_pairs(tmp_path: Path) -> None:
    """trainer.roles: a role with no pair source, one the config does not bind,
    or the attacker outside the graph whose queries it writes, fails at load
    time naming the file, the field and the roles that can be trained."""
    assert load_config(None).trainer.roles == ["learner"]
    own = {"engines.attacker": {"port": 8769}, "roles.attacker.engine": "attacker"}
    both = load_config(None, {"trainer.roles": ["learner", "attacker"], **own})
    assert both.trainer.roles == ["learner", "attacker"]
    p = _write(tmp_path, "trainer:\n  roles: [learner, critic]\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "trainer.roles names 'critic'" in msg
    assert "learner: every graph's preference pairs" in msg and "attacker: " in msg
    p = _write(tmp_path, "trainer:\n  roles: [attacker]\nloop:\n  graph: debate\n")
    with pytest.raises(ConfigError, match=r"(?s)run.yaml: .*loop.graph is 'debate'"):
        load_config(p)
    one_round = {
        "trainer.roles": ["learner", "attacker"],
        **own,
        "trainer.coevolution": "alternate",
    }
    with pytest.raises(ConfigError, match="trainer.pairs_per_version is None: it needs two roles"):
        load_config(None, one_round)
    rounds = {**one_round, "trainer.pairs_per_version": 8}
    # versions mid-run overlap on their engines: unbatched ones
    unbatched = {f"engines.{e}.continuous_batching": False for e in ("learner", "attacker")}
    assert load_config(None, {**rounds, **unbatched}).trainer.coevolution == "alternate"
    p = _write(tmp_path, "trainer:\n  roles: [learner, learner]\n")
    with pytest.raises(ConfigError, match=r"trainer.roles names \['learner'\] more than once"):
        load_config(p)
    with pytest.raises(ConfigError, match="roles binds only"):
        load_config(
            None,
            {
                "trainer.roles": ["learner", "attacker"],
                "roles": {"learner": {"engine": "learner"}, "critic": {}},
            },
        )


def test_lookalikes_the_attacker_writes_need_an_intent_judge(tmp_path: Path) -> None:
    """Nothing else checks that a look-alike the attacker wrote is harmless, so
    loop.attacker_lookalikes without loop.intent_judge fails at load time, as
    does an intent judge that names a role the config does not bind."""
    p = _write(tmp_path, "loop:\n  attacker_lookalikes: true\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "loop.attacker_lookalikes is true" in msg
    assert "set loop.intent_judge" in msg and "attacker_lookalikes: false" in msg
    judged = {"loop.attacker_lookalikes": True, "loop.intent_judge": "critic"}
    assert load_config(None, judged).loop.intent_judge == "critic"
    with pytest.raises(ConfigError, match="loop.intent_judge names 'judge', but roles binds only"):
        load_config(None, {**judged, "loop.intent_judge": "judge"})


def test_a_trained_role_can_have_settings_of_its_own(tmp_path: Path) -> None:
    """trainer.per_role: one role's training settings over the shared ones;
    an unknown role or field, a shared field or a bad value fails at load time,
    naming the file and the field."""
    from sparring.training.worker import Trainer

    # versions mid-run overlap on the attacker's engine: an unbatched one
    engine = {"port": 8769, "continuous_batching": False}
    own = {"engines.attacker": engine, "roles.attacker.engine": "attacker"}
    per = {"attacker": {"pairs_per_version": 2, "learning_rate": 1e-3}}
    sets = {"trainer.roles": ["learner", "attacker"], **own, "trainer.per_role": per}
    cfg = load_config(None, sets).trainer
    attacker = cfg.for_role("attacker")
    assert (attacker.pairs_per_version, attacker.learning_rate) == (2, 1e-3)
    assert cfg.for_role("learner") == cfg and cfg.pairs_per_version is None
    bus = make_bus(None, tmp_path / "bus.sqlite")
    trainer = Trainer(bus, "unused", tmp_path / "versions", cfg, role="attacker")
    assert trainer.cfg.pairs_per_version == 2 and trainer.cfg.learning_rate == 1e-3
    bus.close()
    bad = {
        "critic": "'critic' is not in trainer.roles",
        "attacker: {coevolution: alternate}": "per_role.attacker.coevolution is shared",
        "attacker: {pairs_per_verison: 2}": "per_role.attacker.pairs_per_verison is not a trainer",
        "attacker: {pairs_per_version: none}": "per_role.attacker.pairs_per_version: Input should",
    }
    for text, expected in bad.items():
        body = text if ":" in text else f"{text}: {{pairs_per_version: 2}}"
        p = _write(
            tmp_path,
            "engines:\n  attacker: {port: 8769, continuous_batching: false}\n"
            "roles:\n  attacker: {engine: attacker}\n"
            f"trainer:\n  roles: [learner, attacker]\n  per_role:\n    {body}\n",
        )
        with pytest.raises(ConfigError) as err:
            load_config(p)
        assert str(p) in str(err.value) and expected in str(err.value), str(err.value)
