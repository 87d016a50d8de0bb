"""What a submitted config may not do: expand YAML aliases without bound, exceed the size
limit, name a secret as an API key, turn on trust_remote_code, or copy environment
variables in through a resolver. Each is refused with a clear error and queues nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.store import RunStore
from jobs.submit import parse_config_text, submit_run
from memfactory_core.config import MAX_CONFIG_BYTES, load_config
from memfactory_core.errors import MemFactoryError
from memfactory_core.eval.config import EvalConfig
from memfactory_core.paths import CONFIGS_DIR

REPO = CONFIGS_DIR.parent.parent
TINY_EVAL = CONFIGS_DIR / "eval_memagent_tiny.yaml"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunStore:
    monkeypatch.setenv("MEMFACTORY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEMFACTORY_ALLOWED_KEY_ENVS", raising=False)
    monkeypatch.delenv("MEMFACTORY_ALLOW_REMOTE_CODE", raising=False)
    return RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")


def eval_config(**changes: Any) -> dict[str, Any]:
    """The tiny evaluation config as a mapping, with top-level keys replaced."""
    config = yaml.safe_load(TINY_EVAL.read_text())
    config.update(changes)
    return config


def alias_bomb(levels: int, width: int = 10) -> str:
    """A config whose ``model.options.x`` expands to ``width ** levels`` values."""
    lines = ["a0: &a0 [lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    body = "\n".join("  " + line for line in lines)
    return (f"bombs:\n{body}\n{TINY_EVAL.read_text()}").replace(
        "model: tiny-random", f"model:\n  model: tiny-random\n  options:\n    x: *a{levels}")


def test_alias_bomb_in_form_text_is_refused_and_nothing_is_queued(store: RunStore) -> None:
    text = alias_bomb(5)  # 111,111 values from about 300 bytes
    assert len(text) < 2000
    with pytest.raises(MemFactoryError, match=r"expands to more than .* aliases"):
        config = parse_config_text(text, source="eval config")
        submit_run(store, "eval", config, base_dir=REPO)
    assert store.list_runs() == []


def test_alias_bomb_in_a_config_file_is_refused(store: RunStore, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(5))
    with pytest.raises(MemFactoryError, match=f"{path}: expands to more than"):
        submit_run(store, "eval", path, base_dir=REPO)
    assert store.list_runs() == []


def test_a_few_aliases_are_still_fine(store: RunStore) -> None:
    text = "shared: &seed 0\n" + TINY_EVAL.read_text().replace("  seed: 0\n",
                                                                "  seed: *seed\n")
    config = parse_config_text(text)
    config.pop("shared")
    run = submit_run(store, "eval", config, base_dir=REPO)
    assert run.config["generation"]["seed"] == 0


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(MemFactoryError, match="recursive"):
        parse_config_text("a: &a [1, *a]\n")


def test_text_over_the_size_limit_is_refused(store: RunStore) -> None:
    text = TINY_EVAL.read_text() + f"notes_padding: '{'x' * MAX_CONFIG_BYTES}'\n"
    with pytest.raises(MemFactoryError, match=f"more than a config may have \\({MAX_CONFIG_BYTES}"):
        parse_config_text(text)


def test_mapping_over_the_size_limit_is_refused(store: RunStore) -> None:
    config = eval_config(model={"model": "tiny-random", "options": {"pad": "x" * MAX_CONFIG_BYTES}})
    with pytest.raises(MemFactoryError, match="more than a config may have"):
        submit_run(store, "eval", config, base_dir=REPO)
    assert store.list_runs() == []


SECRETS = ("MEMFACTORY_UI_AUTH", "MEMFACTORY_DB_URL", "SOME_SERVER_SECRET")


def openai_model(key_env: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {"base_url": "http://127.0.0.1:9/v1"}
    if key_env is not None:
        options["api_key_env"] = key_env
    return {"model": "remote", "backend": "openai", "options": options}


@pytest.mark.parametrize("name", SECRETS)
def test_api_key_env_naming_a_server_variable_is_refused(store: RunStore, name: str) -> None:
    with pytest.raises(MemFactoryError) as caught:
        submit_run(store, "eval", eval_config(model=openai_model(name)), base_dir=REPO)
    message = str(caught.value)
    assert f"model.options.api_key_env: {name!r} is not allowed" in message
    assert "MEMFACTORY_KEY_" in message and "--allow-key-env" in message
    assert store.list_runs() == []


def test_every_place_a_key_name_can_hide_is_checked(store: RunStore) -> None:
    config = yaml.safe_load((CONFIGS_DIR / "train_synthetic_tiny.yaml").read_text())
    config["roles"] = {"judge": openai_model("MEMFACTORY_UI_AUTH")}
    config["rewards"] = [{"name": "llm_judge", "weight": 1.0, "model": "m",
                          "api_key_env": "SOME_SERVER_SECRET"}]
    with pytest.raises(MemFactoryError) as caught:
        submit_run(store, "train", config, base_dir=REPO)
    message = str(caught.value)
    assert "roles.judge.options.api_key_env: 'MEMFACTORY_UI_AUTH'" in message
    assert "rewards.0.api_key_env: 'SOME_SERVER_SECRET'" in message


def test_allowed_key_names_are_accepted(store: RunStore,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run = submit_run(store, "eval", eval_config(model=openai_model("MEMFACTORY_KEY_JUDGE")),
                     base_dir=REPO)
    assert run.status == "queued"
    with pytest.raises(MemFactoryError, match="OPENAI_API_KEY"):
        submit_run(store, "eval", eval_config(model=openai_model("OPENAI_API_KEY")),
                   base_dir=REPO)
    monkeypatch.setenv("MEMFACTORY_ALLOWED_KEY_ENVS", "OPENAI_API_KEY,MEMFACTORY_DB_URL")
    assert submit_run(store, "eval", eval_config(model=openai_model("OPENAI_API_KEY")),
                      base_dir=REPO).status == "queued"
    with pytest.raises(MemFactoryError, match="'MEMFACTORY_DB_URL' is not allowed"):
        submit_run(store, "eval", eval_config(model=openai_model("MEMFACTORY_DB_URL")),
                   base_dir=REPO)


def test_trust_remote_code_is_refused_unless_the_operator_allows_it(
        store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    config = eval_config(model={"model": "tiny-random", "options": {"trust_remote_code": True}})
    with pytest.raises(MemFactoryError,
                       match=r"model\.options\.trust_remote_code: .*--allow-remote"):
        submit_run(store, "eval", config, base_dir=REPO)
    assert store.list_runs() == []
    monkeypatch.setenv("MEMFACTORY_ALLOW_REMOTE_CODE", "1")
    assert submit_run(store, "eval", config, base_dir=REPO).status == "queued"


def test_the_local_command_line_keeps_trust_remote_code(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text(TINY_EVAL.read_text().replace(
        "model: tiny-random", "model:\n  model: tiny-random\n  options: {trust_remote_code: true}"))
    cfg = load_config(path, [], EvalConfig)
    assert cfg.model.options == {"trust_remote_code": True}


def test_resolvers_cannot_copy_environment_variables_into_a_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SERVER_SECRET", "s3cr3t-value")
    path = tmp_path / "eval.yaml"
    path.write_text(TINY_EVAL.read_text().replace(
        "model: tiny-random",
        "model:\n  model: tiny-random\n  options: {note: '${oc.env:SOME_SERVER_SECRET}'}"))
    with pytest.raises(MemFactoryError, match="resolvers"):
        load_config(path, [], EvalConfig)
    with pytest.raises(MemFactoryError, match="resolvers"):
        load_config(TINY_EVAL, ["model.options.note=${oc.env:SOME_SERVER_SECRET}"], EvalConfig)
