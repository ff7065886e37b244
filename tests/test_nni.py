"""NNI's compressor API on ONNX models (onnx_compress.nni)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_compress.nni as nni
from onnx_compress import evaluators, inspect, ir
from onnx_compress.errors import ParameterError
from onnx_compress.nni import weights as wmod
from onnx_compress.runtime import sessions

ROOT = Path(__file__).resolve().parents[1]
VGG = ROOT / "models" / "vgg_small.onnx"
NAMES = [layer.name for layer in inspect(str(VGG)).compressible]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.8, 0.95])
def test_level_pruner_exact_sparsity_on_written_weights(sparsity):
    pruner = nni.LevelPruner([{"sparsity": sparsity, "op_types": "default"}])
    out = pruner(VGG)
    written = wmod.weights_of(out)
    assert set(pruner.masks) == set(NAMES)
    for name in NAMES:
        w = written[name]
        assert np.count_nonzero(w == 0) == round(sparsity * w.size), name
        assert pruner.stats[name].zeros == round(sparsity * w.size)
        assert np.array_equal(pruner.masks[name], w != 0)


def test_two_four_sparsity_along_input_channels():
    out = nni.LevelPruner([{"op_types": "default"}], n_m=(2, 4))(VGG)
    proto = ir.load(out)
    nodes = wmod.node_protos(proto)
    for name, w in wmod.weights_of(out).items():
        axis = wmod.input_axis("Conv" if w.ndim == 4 else "Gemm", nodes[name])
        v = np.moveaxis(w, axis, -1)
        c = v.shape[-1] // 4 * 4
        if c:
            groups = v[..., :c].reshape(*v.shape[:-1], -1, 4)
            assert np.all(np.count_nonzero(groups, axis=-1) == 2), name
    same = nni.LevelPruner([{"op_types": "default", "nm": (2, 4)}])(VGG)
    for a, b in zip(wmod.weights_of(out).values(), wmod.weights_of(same).values()):
        assert np.array_equal(a, b)


def test_config_list_override_exclude_and_string_op_types():
    cfg = [{"sparsity": 0.8, "op_types": "default"}, {"sparsity": 0.6, "op_names": NAMES[1:3]},
           {"exclude": True, "op_names": [NAMES[0]]}]
    pruner = nni.LevelPruner(cfg)
    pruner(VGG)
    assert NAMES[0] not in pruner.masks
    assert [pruner.stats[n].target for n in NAMES[1:]] == [0.6, 0.6] + [0.8] * (len(NAMES) - 3)
    assert abs(pruner.stats[NAMES[1]].achieved - 0.6) < 1 / pruner.stats[NAMES[1]].size
    pruner = nni.LevelPruner([{"sparsity": 0.5, "op_types": "Gemm"}])
    pruner(VGG)
    assert sorted(pruner.masks) == sorted(n for n in NAMES if n.endswith("Gemm"))
    pruner = nni.LevelPruner([{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner(VGG)
    assert sorted(pruner.masks) == sorted(n for n in NAMES if n.endswith("Conv"))


@pytest.mark.parametrize("cfg, match", [
    ([{"sparsity": 0.5, "op_types": "default", "ratio": 1}], r"config_list\[0\]: unknown key 'ratio'"),
    ([{"sparsity": 0.5, "op_types": "default"}, {"sparsity": 1.0, "op_types": "Conv"}], r"config_list\[1\]: 'sparsity' must"),
    ([{"sparsity": -0.1, "op_types": "Conv"}], r"config_list\[0\]: 'sparsity'"),
    ([{"sparsity": 0.5, "op_types": "Dense"}], r"config_list\[0\]: unknown op type 'Dense'"),
    ([{"sparsity": 0.5, "nm": (4, 2)}], r"config_list\[0\]: 'nm'"),
    ({"sparsity": 0.5}, "must be a list"),
])
def test_config_errors(cfg, match):
    with pytest.raises(ParameterError, match=match):
        nni.LevelPruner(cfg)(VGG)


def test_unknown_op_name_is_an_error_naming_the_entry():
    with pytest.raises(ParameterError, match=r"config_list\[1\]: op_names: 'conv9' matches no layer"):
        nni.LevelPruner([{"sparsity": 0.5}, {"sparsity": 0.2, "op_names": ["conv9"]}])(VGG)


def test_custom_pruner_gets_the_layer_and_input_is_untouched():
    seen = []

    class Mine(nni.Pruner):
        def bind_model(self, model):
            seen.append(type(model))

        def calc_mask(self, weight, config, **kwargs):
            seen.append((kwargs["op_name"], kwargs["op_type"], kwargs["op"].op_type, weight.shape))
            return np.abs(weight) > 0.05

    proto = onnx.load(str(VGG))
    before = proto.SerializeToString()
    pruner = Mine([{"op_types": "Conv"}])
    out = pruner.compress(proto)
    assert proto.SerializeToString() == before
    assert seen[0] is onnx.ModelProto and len(seen) == 6
    assert all(s[1] == s[2] == "Conv" for s in seen[1:])
    for name, w in wmod.weights_of(out).items():
        orig = wmod.weights_of(proto)[name]
        if name.endswith("Conv"):
            assert np.array_equal(w, np.where(np.abs(orig) > 0.05, orig, 0))
        else:
            assert np.array_equal(w, orig)


def test_export_model_writes_model_and_masks(tmp_path):
    pruner = nni.LevelPruner([{"sparsity": 0.7, "op_types": "default"}])
    with pytest.raises(ParameterError, match="call the pruner"):
        pruner.export_model(tmp_path / "m.onnx")
    pruner(VGG)
    pruner.export_model(tmp_path / "m.onnx", tmp_path / "m.npz")
    masks = np.load(tmp_path / "m.npz")
    assert sorted(masks.files) == sorted(NAMES)
    written = wmod.weights_of(ir.load(tmp_path / "m.onnx"))
    for name in NAMES:
        assert np.array_equal(masks[name], written[name] != 0)


def _accuracy(model) -> float:
    return sessions.evaluate(ir.load(model), evaluators.accuracy(ROOT / "models" / "digits32_test.npz"), None, False)


def test_naive_quantizer_int8_through_ort_and_fake_quant():
    q = nni.NaiveQuantizer(data=ROOT / "models" / "digits32_calib.npz")(VGG)
    int8 = [t for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8) == len(NAMES)
    base = _accuracy(VGG)
    assert _accuracy(q) >= base - 0.05
    fq = nni.NaiveQuantizer()(VGG)
    for w in wmod.weights_of(fq).values():
        assert w.dtype == np.float32
        per = np.array([len(np.unique(np.abs(r))) for r in w.reshape(w.shape[0], -1)])
        assert per.max() <= 128
    assert abs(_accuracy(fq) - base) <= 0.01


def test_custom_quantizer_writes_its_weights():
    class Q(nni.Quantizer):
        def quantize_weight(self, weight, config, **kwargs):
            return np.round(weight * 4) / 4

    out = Q([{"op_types": "default"}])(VGG)
    for name, w in wmod.weights_of(out).items():
        assert np.array_equal(w, np.round(wmod.weights_of(ir.load(VGG))[name] * 4) / 4)


@pytest.mark.parametrize("cls", [nni.QAT_Quantizer, nni.DoReFaQuantizer, nni.AGP_Pruner, nni.AGPPruner,
                                 nni.SensitivityPruner])
def test_training_algorithms_are_refused_with_the_way_out(cls):
    with pytest.raises(ParameterError) as err:
        cls([{"q_bits": 8, "op_types": "default"}])
    msg = str(err.value)
    assert "needs training" in msg and "NaiveQuantizer" in msg and "trainer=" in msg and "\n" not in msg


def test_update_epoch_and_step_have_no_effect():
    pruner = nni.LevelPruner([{"sparsity": 0.5, "op_types": "default"}])
    a = pruner(VGG)
    pruner.update_epoch(3)
    pruner.step()
    assert a.SerializeToString() == pruner(VGG).SerializeToString()


def test_example_level_pruner_runs():
    spec = importlib.util.spec_from_file_location("nni_level", ROOT / "examples" / "nni" / "level_pruner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main()
    assert out["float"] > 0.9 and out["level 0.8 sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert out["YourQuantizer"] > 0.9
    assert 0.5 < out["speedup MAC ratio"] < 0.75


def test_naive_quantizer_weights_only_gives_real_int8_weights_without_data():
    import builders

    model = builders.matmul_model(k=64, n=16, lead=(4,))
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    ref = builders.run(model, {"x": x})[0]
    q = nni.NaiveQuantizer(weights_only=True)(model)
    assert "MatMulInteger" in [n.op_type for n in q.graph.node]
    int8 = [t for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert [tuple(t.dims) for t in int8] == [(64, 16)]
    assert not any(t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 for t in q.graph.initializer)
    got = builders.run(q, {"x": x})[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.03  # measured 0.010
    q4 = nni.NaiveQuantizer([{"q_bits": 4, "op_types": "default"}], weights_only=True)(model)
    assert [n.op_type for n in q4.graph.node] == ["MatMulNBits"]
    assert nni.NaiveQuantizer()(model).graph.node[0].op_type == "MatMul"  # default unchanged: fake quantization
    with pytest.raises(ParameterError, match="not both"):
        nni.NaiveQuantizer(data={"x": x}, weights_only=True)
    with pytest.raises(ParameterError, match="weights_only=True quantizes every layer"):
        nni.NaiveQuantizer([{"q_bits": 6, "op_types": "default"}], weights_only=True)(model)
    with pytest.raises(ParameterError, match="int8-weight quantization takes MatMul layers"):
        nni.NaiveQuantizer(weights_only=True)(builders.conv_model())
