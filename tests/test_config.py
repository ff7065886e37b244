"""config_list resolution: precedence, exclusion, fixed ratios, names, aliases, errors."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from onnx_compress.errors import DataError, LayerError, ParameterError
from onnx_compress.search.config import Resolution, load_config, resolve


@dataclass(frozen=True)
class L:
    name: str
    op: str


LAYERS = [L("conv1", "Conv"), L("conv2", "Conv"), L("block.conv3", "Conv"), L("fc1", "Gemm"), L("head", "MatMul")]
ALL = tuple(layer.name for layer in LAYERS)


def test_none_config_selects_every_layer_for_auto() -> None:
    res = resolve(LAYERS, None, None)
    assert res == Resolution(auto=ALL, fixed={}, excluded={})


def test_unmatched_layers_are_excluded_with_reason() -> None:
    res = resolve(LAYERS, [{"op_types": ["Conv"]}], None)
    assert res.auto == ("conv1", "conv2", "block.conv3")
    assert res.excluded == {"fc1": "not matched by config_list", "head": "not matched by config_list"}


def test_later_entries_override_earlier_ones() -> None:
    config = [
        {"op_types": ["default"], "ratio": 0.5},
        {"op_names": ["conv2"]},                 # back to auto
        {"op_types": ["Gemm"], "ratio": 0.25},   # overrides 0.5
        {"op_names": ["conv1"], "exclude": True},
        {"op_names": ["conv1"], "ratio": 0.75},  # re-included after the exclusion
    ]
    res = resolve(LAYERS, config, None)
    assert res.auto == ("conv2",)
    assert res.fixed == {"conv1": 0.75, "block.conv3": 0.5, "fc1": 0.25, "head": 0.5}
    assert list(res.fixed) == ["conv1", "block.conv3", "fc1", "head"]  # graph order
    assert res.excluded == {}


def test_exclude_removes_fixed_ratio_and_names_the_entry() -> None:
    config = [{"op_types": ["Conv"], "ratio": 0.5}, {"op_names": ["conv2"], "exclude": True}]
    res = resolve(LAYERS, config, None)
    assert res.fixed == {"conv1": 0.5, "block.conv3": 0.5}
    assert res.excluded["conv2"] == "excluded by config_list entry 2"
    assert "conv2" not in res.auto


def test_fixed_ratio_is_validated() -> None:
    for bad in (0, 1.5, -0.1, "half", True):
        with pytest.raises(ParameterError, match="ratio"):
            resolve(LAYERS, [{"op_types": ["Conv"], "ratio": bad}], None)
    assert resolve(LAYERS, [{"op_types": ["Conv"], "ratio": 1}], None).fixed["conv1"] == 1.0


def test_exclude_with_ratio_is_refused() -> None:
    with pytest.raises(ParameterError, match="excluded layer takes no ratio"):
        resolve(LAYERS, [{"op_types": ["Conv"], "exclude": True, "ratio": 0.5}], None)


def test_regex_names_fullmatch() -> None:
    res = resolve(LAYERS, [{"op_names": ["re:conv\\d"]}], None)
    assert res.auto == ("conv1", "conv2")  # fullmatch: 'block.conv3' is not taken
    res = resolve(LAYERS, [{"op_names": ["re:.*conv\\d", "fc1"], "ratio": 0.3}], None)
    assert res.fixed == {"conv1": 0.3, "conv2": 0.3, "block.conv3": 0.3, "fc1": 0.3}


def test_regex_matching_nothing_and_bad_regex() -> None:
    with pytest.raises(LayerError, match="matches no layer"):
        resolve(LAYERS, [{"op_names": ["re:conv"]}], None)
    with pytest.raises(ParameterError, match="not a valid regular expression"):
        resolve(LAYERS, [{"op_names": ["re:conv("]}], None)


@pytest.mark.parametrize("alias, expected", [
    ("Conv2d", ("conv1", "conv2", "block.conv3")),
    ("conv1d", ("conv1", "conv2", "block.conv3")),
    ("CONV", ("conv1", "conv2", "block.conv3")),
    ("Linear", ("fc1", "head")),
    ("linear", ("fc1", "head")),
    ("gemm", ("fc1",)),
    ("MatMul", ("head",)),
    ("Default", ALL),
])
def test_op_type_aliases(alias: str, expected: tuple[str, ...]) -> None:
    assert resolve(LAYERS, [{"op_types": [alias]}], None).auto == expected


def test_unknown_op_type_is_refused_with_suggestion() -> None:
    with pytest.raises(ParameterError, match="unknown op type 'Gemmm'.*'Gemm'"):
        resolve(LAYERS, [{"op_types": ["Gemmm"]}], None)


def test_op_types_and_op_names_must_both_match() -> None:
    config = [{"op_types": ["Conv"], "op_names": ["conv1", "fc1", "re:.*3"], "ratio": 0.5}]
    res = resolve(LAYERS, config, None)
    assert res.fixed == {"conv1": 0.5, "block.conv3": 0.5}
    assert res.excluded["fc1"] == "not matched by config_list"


def test_unknown_key_names_it_and_lists_valid_keys() -> None:
    with pytest.raises(ParameterError, match=r"entry 2: unknown key 'op_type'.*op_types.*op_names.*exclude.*ratio"):
        resolve(LAYERS, [{"op_types": ["Conv"]}, {"op_type": ["Conv"]}], None)
    with pytest.raises(ParameterError, match="unknown key 'sparsity_per_layer'.*use 'sparsity'.*'ratio'"):
        resolve(LAYERS, [{"op_types": ["Conv"], "sparsity_per_layer": 0.5}], None)


def test_nni_sparsity_and_string_op_types() -> None:
    """NNI's config_list: sparsity is the fraction removed (ratio = 1 - sparsity), op_types
    may be one string, 'default' is every layer the scheme takes."""
    res = resolve(LAYERS, [{"sparsity": 0.8, "op_types": "default"}, {"sparsity": 0.25, "op_names": "fc1"}], None)
    assert res.fixed["conv1"] == 0.2 and res.fixed["fc1"] == 0.75 and not res.auto
    assert resolve(LAYERS, [{"op_types": "Conv"}], None).auto == resolve(LAYERS, [{"op_types": ["Conv"]}], None).auto
    assert resolve(LAYERS, [{"op_types": "default", "sparsity": 0.0}], None).fixed["fc1"] == 1.0
    for bad in (1.0, -0.1, True, "0.5"):
        with pytest.raises(ParameterError, match="sparsity must be a number in \\[0, 1\\)"):
            resolve(LAYERS, [{"op_types": "default", "sparsity": bad}], None)
    with pytest.raises(ParameterError, match="both 'ratio' and 'sparsity'"):
        resolve(LAYERS, [{"op_types": "default", "sparsity": 0.5, "ratio": 0.5}], None)


def test_target_key_is_refused_as_global() -> None:
    with pytest.raises(ParameterError, match="'target'.*global"):
        resolve(LAYERS, [{"op_types": ["Conv"], "target": 0.5}], None)


def test_entry_needs_op_types_or_op_names() -> None:
    with pytest.raises(ParameterError, match="neither 'op_types' nor 'op_names'"):
        resolve(LAYERS, [{"ratio": 0.5}], None)
    with pytest.raises(ParameterError, match="list of strings"):
        resolve(LAYERS, [{"op_types": 3}], None)
    with pytest.raises(ParameterError, match="list of strings"):
        resolve(LAYERS, [{"op_types": ""}], None)
    with pytest.raises(ParameterError, match="empty list"):
        resolve(LAYERS, [{"op_names": []}], None)
    with pytest.raises(ParameterError, match="expected a dict"):
        resolve(LAYERS, ["Conv"], None)
    with pytest.raises(ParameterError, match="config_list must be a list"):
        resolve(LAYERS, {"op_types": ["Conv"]}, None)


def test_unknown_op_name_suggests_close_matches() -> None:
    with pytest.raises(LayerError, match="unknown layer 'conv_1'; did you mean 'conv1'"):
        resolve(LAYERS, [{"op_names": ["conv_1"]}], None)


def test_modules_to_ignore() -> None:
    res = resolve(LAYERS, [{"op_types": ["default"], "ratio": 0.5}, {"op_names": ["conv2"]}], ["conv2", "fc1"])
    assert res.auto == ()
    assert res.fixed == {"conv1": 0.5, "block.conv3": 0.5, "head": 0.5}
    assert res.excluded == {"conv2": "in modules_to_ignore", "fc1": "in modules_to_ignore"}
    assert resolve(LAYERS, None, ["head"]).auto == ALL[:-1]


def test_modules_to_ignore_unknown_name() -> None:
    with pytest.raises(LayerError, match="modules_to_ignore: unknown layer 'fc'; did you mean 'fc1'"):
        resolve(LAYERS, None, ["fc"])
    with pytest.raises(ParameterError, match="list of layer names"):
        resolve(LAYERS, None, "fc1")


def test_load_config(tmp_path) -> None:
    entries = [{"op_types": ["Conv"], "ratio": 0.5}]
    plain, wrapped = tmp_path / "a.json", tmp_path / "b.json"
    plain.write_text(json.dumps(entries))
    wrapped.write_text(json.dumps({"config_list": entries}))
    assert load_config(plain) == entries
    assert load_config(wrapped) == entries


def test_load_config_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[{'op_types': ['Conv']}]")
    with pytest.raises(DataError, match=r"bad\.json: not a readable JSON file"):
        load_config(bad)
    with pytest.raises(DataError, match=r"missing\.json: no such config file"):
        load_config(tmp_path / "missing.json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"config_list": [], "modules_to_ignore": ["x"]}))
    with pytest.raises(DataError, match=r"other\.json: .*exactly one key"):
        load_config(other)
    other.write_text("42")
    with pytest.raises(DataError, match=r"other\.json: expected a list"):
        load_config(other)
