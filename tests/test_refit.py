"""Sequential least-squares refit of weight-SVD factors (svd_refit)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_compress as oc

import builders as b


def mlp(seed: int = 0, widths=(24, 32, 32, 32, 10)) -> onnx.ModelProto:
    """x -> MatMul -> Relu -> Gemm(transB=1, bias) -> Relu -> MatMul -> Relu -> Gemm: a chain whose
    inputs are correlated (low effective rank), as real activations are."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:])):
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        out = f"h{i}"
        if i % 2:
            inits += [numpy_helper.from_array(w.T.copy(), f"w{i}"), numpy_helper.from_array(
                rng.standard_normal(n).astype(np.float32) * 0.1, f"b{i}")]
            nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], name=f"fc{i}", transB=1))
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"fc{i}"))
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        prev = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", widths[0]])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", widths[-1]])], inits)
    return b._make_model(graph, opset=17)


def data(seed: int, n: int) -> dict[str, np.ndarray]:
    basis = np.random.default_rng(99).standard_normal((6, 24))  # one subspace for every split of the data
    rng = np.random.default_rng(seed)
    return {"x": (rng.standard_normal((n, 6)) @ basis + 0.05 * rng.standard_normal((n, 24))).astype(np.float32)}


def rel_error(model, reference, feeds) -> float:
    got, want = b.run(model, feeds)[0], b.run(reference, feeds)[0]
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_refit_lowers_the_held_out_output_error_of_a_chain():
    model, calib, held_out = mlp(), data(1, 2000), data(2, 500)
    plain, _ = oc.compress(model, "weight_svd", 0.3, data=calib, input_shape=(1, 24))
    refit, stats = oc.compress(model, "weight_svd", 0.3, data=calib, input_shape=(1, 24), svd_refit=True)
    e_plain, e_refit = rel_error(plain, model, held_out), rel_error(refit, model, held_out)
    assert e_refit < 0.95 * e_plain, (e_plain, e_refit)  # measured: 0.581 -> 0.529
    gain = {ls.name: float(ls.note.split("x")[-1]) for ls in stats.layers}
    assert gain["fc0"] > 0.99  # the first layer sees unchanged inputs: almost nothing to correct
    assert min(gain["fc1"], gain["fc2"]) < 0.98  # later layers correct what the earlier splits pass down
    # same shapes and ranks: only the second factors' values change
    assert [(t.name, tuple(t.dims)) for t in plain.graph.initializer] == \
           [(t.name, tuple(t.dims)) for t in refit.graph.initializer]


def test_refit_is_deterministic_and_off_by_default():
    model, calib = mlp(), data(1, 1000)
    a, _ = oc.compress(model, "weight_svd", 0.5, data=calib, input_shape=(1, 24), svd_refit=True)
    again, _ = oc.compress(model, "weight_svd", 0.5, data=calib, input_shape=(1, 24), svd_refit=True)
    default, _ = oc.compress(model, "weight_svd", 0.5, data=calib, input_shape=(1, 24))
    assert a.SerializeToString() == again.SerializeToString()
    assert default.SerializeToString() != a.SerializeToString()


def test_refit_touches_only_the_splits_and_leaves_plain_svd_alone():
    model = b.cnn_model()
    feeds = {"x": np.random.default_rng(0).standard_normal((8, 1, 12, 12)).astype(np.float32)}
    with_refit, stats = oc.compress(model, "weight_svd", 0.5, data=feeds, svd_refit=True)
    without, _ = oc.compress(model, "weight_svd", 0.5, data=feeds)
    inits = lambda m: {t.name: t.SerializeToString() for t in m.graph.initializer}  # noqa: E731
    changed = {n for n, v in inits(with_refit).items() if inits(without).get(n) != v}
    convs = {i for n in with_refit.graph.node if n.op_type == "Conv" and n.name.endswith(".1") for i in n.input[1:]}
    splits = {i for n in with_refit.graph.node if n.name.endswith((".0", ".1")) for i in n.input[1:]}
    assert changed & convs and changed <= splits  # conv splits are refit too (second factor, bias)
    plain_a, _ = oc.compress(mlp(), "weight_svd", 0.5, data=data(1, 500), input_shape=(1, 24), data_aware=False,
                             svd_refit=True)
    plain_b, _ = oc.compress(mlp(), "weight_svd", 0.5, input_shape=(1, 24))
    assert plain_a.SerializeToString() == plain_b.SerializeToString()


def test_both_factors_reach_the_best_rank_r_map_when_inputs_changed():
    """refit_factors: with inputs that drifted from the ones the factors were made for, the
    reduced-rank refit of both factors reaches the optimal rank-r map from the new inputs
    (whitened truncated SVD, computed here independently) and beats refitting B alone."""
    from onnx_compress.schemes.svd.refit import refit_factors

    rng = np.random.default_rng(0)
    n, k, m, r = 4000, 16, 12, 4
    mix = rng.standard_normal((k, k))
    x = rng.standard_normal((n, k)) @ mix  # correlated inputs of the compressed model
    w = rng.standard_normal((k, m))
    target = x @ w + 0.01 * rng.standard_normal((n, m))
    u, s, vt = np.linalg.svd(w, full_matrices=False)  # plain SVD: blind to the inputs
    a, b_ = u[:, :r] * s[:r], vt[:r]
    a_new, b_new, gain = refit_factors(x, target, a, b_, np.random.default_rng(1))
    err = np.linalg.norm(x @ a_new @ b_new - target)
    # the optimum: least squares, then the fitted values' best rank-r approximation
    full = np.linalg.lstsq(x, target, rcond=None)[0]
    uf, sf, vtf = np.linalg.svd(x @ full, full_matrices=False)
    best = np.linalg.norm((uf[:, :r] * sf[:r]) @ vtf[:r] - target)
    assert err == pytest.approx(best, rel=1e-4)
    b_only = np.linalg.lstsq(x @ a, target, rcond=None)[0]
    assert err < 0.95 * np.linalg.norm(x @ a @ b_only - target)  # measured 0.916
    assert 0 < gain < 1 and a_new.shape == (k, r) and b_new.shape == (r, m)
    same_a, same_b, none = refit_factors(x, x @ a @ b_, a, b_, np.random.default_rng(1))  # already exact
    assert none == 1.0 and same_a is a and same_b is b_


@pytest.mark.parametrize("scheme", ["weight_svd", "spatial_svd"])
def test_conv_splits_are_refit_toward_the_original_outputs(scheme):
    """svd_refit on Conv splits: the second factor and bias of each split conv are refit on
    patches of its input in the compressed model; on held-out data the model's output error
    falls (vgg_small at 0.4: each split alone is data-aware, the refit corrects what the
    earlier splits pass down). Without svd_refit the model is byte-identical to before."""
    from pathlib import Path

    models = Path(__file__).resolve().parents[1] / "models"
    calib, test = str(models / "digits32_calib.npz"), np.load(models / "digits32_test.npz")
    x = {"input": test["input"][:128]}
    ref = b.run(onnx.load(str(models / "vgg_small.onnx")), x)[0]
    errors = {}
    for refit in (False, True):
        out, stats = oc.compress(str(models / "vgg_small.onnx"), scheme, 0.4, data=calib, svd_refit=refit,
                                 num_reconstruction_samples=2000)
        errors[refit] = float(np.linalg.norm(b.run(out, x)[0] - ref) / np.linalg.norm(ref))
        if not refit:
            plain, _ = oc.compress(str(models / "vgg_small.onnx"), scheme, 0.4, data=calib,
                                   num_reconstruction_samples=2000)
            assert out.SerializeToString() == plain.SerializeToString()
    assert errors[True] < 0.8 * errors[False], errors
