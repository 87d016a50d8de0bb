"""Pipeline specs: presets validate; every problem is reported at once with its location."""

from __future__ import annotations

import copy

import pytest

from memfactory_core.components import registry
from memfactory_core.errors import MemFactoryError, ValidationError
from memfactory_core.pipeline import component_catalog, load_pipeline, load_spec, validate_spec


def memagent() -> dict:
    spec = load_spec("memagent")
    assert isinstance(spec, dict)
    return copy.deepcopy(spec)


def test_memagent_preset_validates() -> None:
    p = load_pipeline("memagent")
    assert [s.cls.name for s in p.ingest] == ["token_chunker", "memory_writer"]
    assert [s.cls.name for s in p.query] == ["boxed_answerer"]
    assert p.roles == ["policy"]
    assert p.question_conditioned
    assert p.memory_params.max_tokens == 1024  # type: ignore[attr-defined]


def test_every_problem_is_listed_with_its_location() -> None:
    spec = memagent()
    spec["ingest"][0]["params"]["chunk_tokens"] = -5
    spec["ingest"][1]["params"] = {"max_new_tokens": "many", "colour": "red"}
    spec["query"].append({"component": "no_such_thing"})
    spec["memory"]["params"]["max_tokens"] = 0
    with pytest.raises(ValidationError) as info:
        validate_spec(spec)
    where = [p.location for p in info.value.problems]
    assert "ingest[0] token_chunker: params.chunk_tokens" in where
    assert "ingest[1] memory_writer: params.max_new_tokens" in where
    assert "ingest[1] memory_writer: params.colour" in where
    assert "query[1].component" in where
    assert "memory.params.max_tokens" in where
    text = str(info.value)
    assert "no_such_thing" in text and "token_chunker" in text  # lists the available ones


def test_port_types_are_checked() -> None:
    spec = memagent()
    spec["ingest"] = [spec["ingest"][1]]  # memory writer without a chunker: no chunk port
    with pytest.raises(ValidationError) as info:
        validate_spec(spec)
    messages = str(info.value)
    assert "must start with a segmenter" in messages
    assert "needs input 'chunk'" in messages


def test_query_lane_must_answer_and_segmenter_only_first() -> None:
    spec = memagent()
    spec["query"] = [{"component": "token_chunker"}]
    with pytest.raises(ValidationError) as info:
        validate_spec(spec)
    messages = str(info.value)
    assert "segmenter can only be the first ingest slot" in messages
    assert "no slot produces an 'answer'" in messages


def test_role_on_a_component_without_llm_is_an_error() -> None:
    spec = memagent()
    spec["ingest"][0]["role"] = "policy"
    with pytest.raises(ValidationError, match=r"ingest\[0\] token_chunker: role"):
        validate_spec(spec)


def test_bad_template_placeholder_is_reported() -> None:
    spec = memagent()
    spec["query"][0]["params"]["template"] = "Q: {question} {mmory}"
    with pytest.raises(ValidationError, match="mmory"):
        validate_spec(spec)


def test_unknown_memory_type_and_top_level_fields() -> None:
    with pytest.raises(ValidationError) as info:
        validate_spec({"name": "x", "memory": {"type": "graph"}, "ingest": [], "query": [],
                       "extra": 1})
    where = [p.location for p in info.value.problems]
    assert "memory.type" in where and "extra" in where


def test_missing_pipeline_file_lists_presets(tmp_path) -> None:
    with pytest.raises(MemFactoryError, match="memagent"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(MemFactoryError, match=r"bad\.yaml"):
        load_spec(bad)


def test_alias_bomb_file_is_refused_naming_the_file(tmp_path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
        for i in range(8)))
    with pytest.raises(MemFactoryError, match=r"bomb\.yaml: expands to more than"):
        load_spec(bomb)


def test_slot_ids_are_simple_and_unique() -> None:
    spec = memagent()
    spec["ingest"][0]["id"] = "step_1"
    spec["ingest"][1]["id"] = "step_2"
    spec["query"][0]["id"] = "step_1"
    with pytest.raises(ValidationError) as info:
        validate_spec(spec)
    assert [p.location for p in info.value.problems] == ["query[0].id"]
    assert "ingest[0]" in info.value.problems[0].message
    spec["query"][0]["id"] = "answer"
    assert [s.id for s in validate_spec(spec).spec.query] == ["answer"]
    spec["query"][0]["id"] = "not an id"
    with pytest.raises(ValidationError) as info:
        validate_spec(spec)
    assert [p.location for p in info.value.problems] == ["query[0].id"]


def test_catalog_has_schemas_for_the_builder() -> None:
    catalog = {c["name"]: c for c in component_catalog()}
    assert set(catalog) == set(registry())
    chunker = catalog["token_chunker"]
    assert chunker["segmenter"] and chunker["outputs"] == ["chunk"]
    assert chunker["params_schema"]["properties"]["chunk_tokens"]["default"] == 5000
    assert catalog["memory_writer"]["role"] == "policy"
    assert catalog["memory_writer"]["memory"] == "text"


def test_memory_params_typos_and_conversation_presets() -> None:

    from memfactory_core.eval import resolve_pipeline
    from memfactory_core.eval.config import PipelineRunConfig

    cfg = PipelineRunConfig(pipeline="memagent", model="tiny-random",
                            pipeline_params={"memory": {"max_tokns": 5}})
    with pytest.raises(ValidationError) as info:
        resolve_pipeline(cfg)
    assert [p.location for p in info.value.problems] == ["memory.params.max_tokns"]
    for name in ("memory_r1", "rag"):
        p = load_pipeline(name)
        assert p.spec.memory.type == "bank" and not p.question_conditioned
    spec = copy.deepcopy(load_spec("memory_r1"))
    spec["memory"]["params"]["embeder"] = "minilm"  # type: ignore[index]
    spec["ingest"][2]["params"]["top_k"] = -1  # type: ignore[index]
    with pytest.raises(ValidationError) as info:
        validate_spec(spec)
    assert {p.location for p in info.value.problems} == {
        "memory.params.embeder", "ingest[2] memory_manager: params.top_k"}
