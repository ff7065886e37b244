"""Channel-pruning kernels: patches against ONNX Runtime, least-squares refit, channel selection.

Patches must reproduce a conv's output at sampled positions (ORT as the reference); the
refit must beat plain channel dropping on held-out samples and be exact when nothing is
pruned; greedy selection must never do worse than magnitude selection on its own objective.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from onnx import numpy_helper

import builders as b
from onnx_compress.errors import ParameterError
from onnx_compress import cost
from onnx_compress.schemes import patches as patches_mod
from onnx_compress.schemes.pruning import lstsq, select


def weights(model):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return inits["W"], inits.get("B")


def correlated(rng: np.random.Generator, n: int, dim: int, rank: int | None = None) -> np.ndarray:
    """(n, dim) samples with strongly correlated features (low-rank mix plus a little noise)."""
    rank = rank or max(1, dim // 3)
    mix = rng.standard_normal((rank, dim))
    return rng.standard_normal((n, rank)) @ mix + 0.1 * rng.standard_normal((n, dim))


def output(patches: np.ndarray, weight: np.ndarray, bias=None) -> np.ndarray:
    y = np.einsum("ncK,ocK->no", patches, weight)
    return y if bias is None else y + bias


def err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sum((a - ref) ** 2))


# ------------------------------------------------------------------------ patches
CONV_CASES = [
    dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    dict(kernel=(3, 3), dilations=(2, 2), in_spatial=(11, 12)),
    dict(kernel=(3, 3), pads=(0, 1, 2, 0)),
    dict(kernel=(3, 5), strides=(1, 2), pads=(1, 2, 0, 1), dilations=(2, 1), in_spatial=(12, 13), bias=False),
    dict(kernel=(3,), in_spatial=(15,)),
    dict(kernel=(5,), in_spatial=(20,), strides=(2,), pads=(2, 1), dilations=(2,)),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_conv_patches_reproduce_ort_output(case):
    model = b.conv_model(n_in=5, n_out=4, **case)
    feeds = b.random_input(model, seed=1)
    y = b.run(model, feeds)[0]
    w, bias = weights(model)
    nd = len(case["kernel"])
    positions = patches_mod.sample_positions(np.random.default_rng(0), y.shape, 200)
    assert positions.shape == (200, 1 + nd) and positions.dtype == np.int64
    patches = patches_mod.conv_patches(feeds["x"], positions, case["kernel"], case.get("strides"),
                              case.get("pads"), case.get("dilations"))
    assert patches.shape == (200, 5, int(np.prod(case["kernel"])))
    got = output(patches.astype(np.float64), w.reshape(4, 5, -1), bias)
    want = y[(positions[:, 0], slice(None), *positions[:, 1:].T)]  # (n, n_out)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_conv_patches_cover_every_position_and_padding_is_zero():
    x = np.arange(1, 1 + 2 * 1 * 4, dtype=np.float32).reshape(2, 1, 4)
    positions = np.array([[0, 0], [1, 1]])
    patches = patches_mod.conv_patches(x, positions, (3,), strides=(2,), pads=(1, 1))
    np.testing.assert_array_equal(patches[:, 0], [[0, 1, 2], [6, 7, 8]])


def test_matmul_rows_reproduce_matmul():
    model = b.matmul_model(k=6, n=3, lead=(2, 5))
    feeds = b.random_input(model)
    y = b.run(model, feeds)[0]
    w = numpy_helper.to_array(model.graph.initializer[0])  # (K, N): y = x @ w
    positions = patches_mod.sample_positions(np.random.default_rng(0), y.shape, 30, matmul=True)
    assert positions.shape == (30, 1) and positions.max() < 10
    patches = patches_mod.matmul_rows(feeds["x"], positions)
    assert patches.shape == (30, 6, 1)
    np.testing.assert_allclose(output(patches, w.T[:, :, None]), y.reshape(-1, 3)[positions[:, 0]], atol=1e-5)
    assert patches_mod.sample_positions(np.random.default_rng(0), (7, 3), 4).shape == (4, 1)


def test_sampling_and_patch_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ParameterError):
        patches_mod.sample_positions(rng, (2, 0, 3), 5)
    with pytest.raises(ParameterError):
        patches_mod.sample_positions(rng, (2, 3, 4), -1)
    x = np.zeros((1, 2, 5, 5), dtype=np.float32)
    with pytest.raises(ParameterError, match="pads"):
        patches_mod.conv_patches(x, np.zeros((1, 3), dtype=np.int64), (3, 3), pads=(1, 1))
    with pytest.raises(ParameterError, match="out of range"):
        patches_mod.conv_patches(x, np.array([[0, 3, 0]]), (3, 3))  # output is 3x3
    with pytest.raises(ParameterError, match="spatial"):
        patches_mod.conv_patches(x, np.zeros((1, 2), dtype=np.int64), (3,))


# ------------------------------------------------------------------ least squares
def layer_data(seed: int, n: int, c: int = 8, k: int = 3, n_out: int = 5):
    rng = np.random.default_rng(seed)
    patches = correlated(rng, n, c * k).reshape(n, c, k)
    weight = rng.standard_normal((n_out, c, k))
    bias = rng.standard_normal(n_out)
    return patches, weight, bias


def test_reconstruct_beats_dropping_channels_on_held_out_samples():
    patches, weight, bias = layer_data(0, 600)
    train, test = slice(0, 400), slice(400, None)
    targets = output(patches, weight, bias)
    kept = select.select_by_magnitude(weight, 4)
    w_fit, b_fit = lstsq.reconstruct(patches[train][:, kept], targets[train], fit_bias=True)
    assert w_fit.shape == (5, 4, 3) and b_fit.shape == (5,)
    refit = err(output(patches[test][:, kept], w_fit, b_fit), targets[test])
    dropped = err(output(patches[test][:, kept], weight[:, kept], bias), targets[test])
    assert refit < 0.5 * dropped


@pytest.mark.parametrize("ridge, atol", [(0.0, 1e-6), (1e-6, 1e-5)])  # the ridge shrinks by ~1e-6 relative
def test_reconstruct_recovers_the_layer_when_nothing_is_pruned(ridge, atol):
    rng = np.random.default_rng(1)
    patches = rng.standard_normal((500, 6, 4))
    weight, bias = rng.standard_normal((3, 6, 4)), rng.standard_normal(3)
    w_fit, b_fit = lstsq.reconstruct(patches, output(patches, weight, bias), fit_bias=True, ridge=ridge)
    np.testing.assert_allclose(w_fit, weight, atol=atol)
    np.testing.assert_allclose(b_fit, bias, atol=atol)
    w_fit, b_fit = lstsq.reconstruct(patches, output(patches, weight), fit_bias=False, ridge=ridge)
    assert b_fit is None
    np.testing.assert_allclose(w_fit, weight, atol=atol)


@pytest.mark.parametrize("ridge", [0.0, 1e-6])
def test_underdetermined_system_gives_finite_weights(ridge):
    patches, weight, bias = layer_data(2, 10)  # 10 samples, 25 unknowns per output
    targets = output(patches, weight, bias)
    sol = lstsq.NormalEquations(24, 5, fit_bias=True).add(patches.reshape(10, -1), targets).solve(ridge)
    assert sol.underdetermined and sol.count == 10
    assert np.isfinite(sol.weight).all() and np.isfinite(sol.bias).all()
    fitted = patches.reshape(10, -1) @ sol.weight.T + sol.bias
    np.testing.assert_allclose(fitted, targets, atol=1e-3)  # interpolates the few samples
    w_fit, b_fit = lstsq.reconstruct(patches, targets, fit_bias=True, ridge=ridge)
    assert np.isfinite(w_fit).all() and np.isfinite(b_fit).all()


def test_singular_and_empty_systems_do_not_raise():
    patches, weight, bias = layer_data(3, 200)
    patches[:, 2] = 0.0  # a dead channel: X^T X is singular
    equations = lstsq.NormalEquations(24, 5, fit_bias=True)
    sol = equations.add(patches.reshape(200, -1), output(patches, weight, bias)).solve(0.0)
    assert sol.underdetermined and np.isfinite(sol.weight).all()
    np.testing.assert_allclose(sol.weight.reshape(5, 8, 3)[:, 2], 0.0, atol=1e-9)  # minimum norm
    empty = lstsq.NormalEquations(4, 2, fit_bias=True).solve()
    assert empty.underdetermined and not empty.weight.any() and not empty.bias.any()
    x = layer_data(4, 200)[0].reshape(200, -1)
    well_posed = lstsq.NormalEquations(24, 5).add(x, np.ones((200, 5))).solve()
    assert not well_posed.underdetermined


@pytest.mark.parametrize("fit_bias", [False, True])
def test_batch_accumulation_equals_one_shot(fit_bias):
    patches, weight, bias = layer_data(5, 300)
    x, y = patches.reshape(300, -1), output(patches, weight, bias) + 0.1
    one = lstsq.NormalEquations(24, 5, fit_bias).add(x, y).solve()
    batched = lstsq.NormalEquations(24, 5, fit_bias)
    for start in range(0, 300, 70):
        batched.add(x[start:start + 70], y[start:start + 70])
    many = batched.solve()
    assert batched.count == 300
    np.testing.assert_allclose(many.weight, one.weight, rtol=1e-9, atol=1e-9)
    if fit_bias:
        np.testing.assert_allclose(many.bias, one.bias, rtol=1e-9, atol=1e-9)
    w, b_ = lstsq.reconstruct(patches, y, fit_bias)
    np.testing.assert_allclose(w.reshape(5, -1), one.weight, rtol=1e-9, atol=1e-9)


def test_least_squares_errors():
    eq = lstsq.NormalEquations(4, 2)
    with pytest.raises(ParameterError, match="got x"):
        eq.add(np.zeros((3, 5)), np.zeros((3, 2)))
    with pytest.raises(ParameterError, match="ridge"):
        eq.solve(-1.0)
    with pytest.raises(ParameterError, match="ridge"):
        select.select_greedy_lsq(np.ones((3, 4, 1)), np.ones((2, 4, 1)), 2, refine=True, ridge=float("nan"))
    with pytest.raises(ParameterError, match="xtx"):
        select.select_greedy_gram(np.eye(5), np.ones((2, 4, 1)), 2, refine=True)
    with pytest.raises(ParameterError, match="targets"):
        lstsq.reconstruct(np.zeros((3, 2, 1)), np.zeros((4, 2)), fit_bias=False)


# --------------------------------------------------------------- channel selection
def zero_error(patches, weight, kept) -> float:
    """Output error of dropping every channel not in `kept`, without refit."""
    removed = np.setdiff1d(np.arange(weight.shape[1]), kept)
    return err(output(patches[:, removed], weight[:, removed]), 0.0)


def test_greedy_removes_channels_without_contribution_first():
    rng = np.random.default_rng(0)
    patches = rng.standard_normal((100, 6, 2))
    weight = rng.standard_normal((4, 6, 2))
    patches[:, 1] = 0.0  # no input
    weight[:, 4] = 0.0  # no weight
    np.testing.assert_array_equal(select.select_greedy_lsq(patches, weight, 4), [0, 2, 3, 5])
    np.testing.assert_array_equal(select.select_greedy_lsq(patches, weight, 4, refine=True), [0, 2, 3, 5])
    assert 1 not in select.select_greedy_lsq(patches, weight, 3)


@pytest.mark.parametrize("seed", range(8))
def test_greedy_never_worse_than_magnitude(seed):
    rng = np.random.default_rng(seed)
    c, k = 12, 3
    patches = correlated(rng, 300, c * k).reshape(300, c, k) * rng.uniform(0.2, 2.0, (1, c, 1))
    weight = rng.standard_normal((6, c, k))
    for keep in (3, 6, 9):
        greedy = select.select_greedy_lsq(patches, weight, keep)
        magnitude = select.select_by_magnitude(weight, keep)
        assert zero_error(patches, weight, greedy) <= zero_error(patches, weight, magnitude) * (1 + 1e-12)


def test_gram_matches_explicit_contributions():
    patches, weight, _ = layer_data(6, 50, c=5, k=4)
    z = np.einsum("ncK,ocK->cno", patches, weight)
    flat = patches.reshape(50, -1)
    want = np.einsum("cno,dno->cd", z, z)
    np.testing.assert_allclose(select.contribution_gram(flat.T @ flat, weight), want, rtol=1e-10)


def test_refined_selection_uses_collinear_inputs():
    rng = np.random.default_rng(7)
    patches = rng.standard_normal((200, 5, 1))
    patches[:, 1] = 2.0 * patches[:, 0]  # channel 1 carries nothing channel 0 lacks
    weight = rng.standard_normal((3, 5, 1)) * 0.1
    weight[:, :2] = 3.0  # but both are large, so plain greedy and magnitude keep them
    kept = select.select_greedy_lsq(patches, weight, 4, refine=True)
    assert len(kept) == 4 and not {0, 1} <= set(kept.tolist())
    assert {0, 1} <= set(select.select_greedy_lsq(patches, weight, 4).tolist())
    w_fit, _ = lstsq.reconstruct(patches[:, kept], output(patches, weight), fit_bias=False, ridge=0.0)
    assert err(output(patches[:, kept], w_fit), output(patches, weight)) < 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_refined_single_removal_is_the_best_after_refit(seed):
    """With one channel to remove, the refit-aware score is exact: it must pick the best one."""
    patches, weight, _ = layer_data(10 + seed, 400, c=10, k=2)
    targets = output(patches, weight)

    def refit_error(kept):
        w_fit, _ = lstsq.reconstruct(patches[:, kept], targets, fit_bias=False, ridge=0.0)
        return err(output(patches[:, kept], w_fit), targets)

    errors = [refit_error(np.delete(np.arange(10), c)) for c in range(10)]
    kept = select.select_greedy_lsq(patches, weight, 9, refine=True, ridge=0.0)
    assert refit_error(kept) == pytest.approx(min(errors), rel=1e-9)


@pytest.mark.parametrize("method", sorted(select.SELECTORS))
def test_selectors_keep_locked_channels_and_exact_count(method):
    rng = np.random.default_rng(8)
    patches = rng.standard_normal((80, 10, 3))
    weight = rng.standard_normal((4, 10, 3))
    weight[:, [2, 7]] *= 1e-3  # the first candidates for removal, but locked
    locked = np.zeros(10, dtype=bool)
    locked[[2, 7]] = True
    for keep in (2, 3, 5, 10):
        kept = select.SELECTORS[method](patches, weight, keep, locked)
        assert kept.dtype == np.int64 and len(kept) == keep
        assert np.all(np.diff(kept) > 0) and {2, 7} <= set(kept.tolist())
    np.testing.assert_array_equal(select.SELECTORS[method](patches, weight, 2, locked), [2, 7])


def test_magnitude_ties_keep_lower_index():
    weight = np.ones((2, 5, 1))
    weight[:, 3] = 2.0
    np.testing.assert_array_equal(select.select_by_magnitude(weight, 3), [0, 1, 3])
    np.testing.assert_array_equal(select.select_by_magnitude(weight.reshape(2, 5), 1), [3])


@pytest.mark.parametrize("keep, locked", [(0, None), (11, None), (2, [0, 1, 2]), (3.0, None), (True, None)])
def test_selection_rejects_bad_keep(keep, locked):
    weight = np.ones((2, 10, 1))
    patches = np.ones((4, 10, 1))
    mask = None
    if locked is not None:
        mask = np.zeros(10, dtype=bool)
        mask[locked] = True
    for method in select.SELECTORS:
        with pytest.raises(ParameterError, match="keep"):
            select.SELECTORS[method](patches, weight, keep, mask)


def test_selection_rejects_bad_inputs():
    weight = np.ones((2, 10, 1))
    with pytest.raises(ParameterError, match="locked"):
        select.select_by_magnitude(weight, 3, np.zeros(9, dtype=bool))
    with pytest.raises(ParameterError, match="patches"):
        select.SELECTORS["greedy"](None, weight, 3, None)
    with pytest.raises(ParameterError, match="patches"):
        select.select_greedy_lsq(np.ones((4, 9, 1)), weight, 3)


# ---------------------------------------------------------------------- kept count
@pytest.mark.parametrize("total, ratio, multiplicity, minimum, want", [
    (10, 0.3, 1, 1, 3),
    (100, 0.57, 1, 1, 57),  # 0.57 * 100 == 56.99999999999999 in floats
    (10, Fraction(1, 3), 1, 1, 3),
    (100, 0.57, 8, 1, 56),
    (64, 0.5, 16, 1, 32),
    (10, 0.05, 1, 1, 1),  # never 0
    (10, 0.05, 4, 1, 4),  # rounds up to one multiple
    (3, 0.1, 4, 1, 3),  # ... but never past total
    (10, 1, 4, 1, 10),  # keeping everything is always allowed
    (10, 0.99, 4, 1, 8),
    (100, 0.01, 1, 5, 5),
    (100, 0.01, 4, 5, 8),  # minimum rounded up to a multiple
    (6, 0.01, 4, 7, 6),
])
def test_kept_count(total, ratio, multiplicity, minimum, want):
    assert cost.kept_count(total, ratio, multiplicity, minimum) == want


@pytest.mark.parametrize("args", [(10, 0), (10, 1.5), (10, "x"), (0, 0.5), (10, 0.5, 0), (10, 0.5, 1, 0)])
def test_kept_count_errors(args):
    with pytest.raises(ParameterError):
        cost.kept_count(*args)


@pytest.mark.parametrize("fit_bias", [True, False])
def test_gramfit_dual_form_equals_primal(fit_bias):
    """Fewer samples than unknowns: the n x n dual solve gives the primal's minimiser."""
    rng = np.random.default_rng(3)
    n, c, k, n_out = 120, 30, 9, 16
    patches = rng.normal(size=(n, c, k))
    w = rng.normal(size=(n_out, c, k))
    targets = np.einsum("ncK,ocK->no", patches, w) + 0.3 * rng.normal(size=(n, n_out)) + 2.0
    gram = lstsq.GramFit(patches, targets, fit_bias)
    keep = np.arange(0, c, 3)[:8]  # 72 unknowns < 120 samples: primal is the natural form
    keep_wide = np.arange(c)[:25]  # 225 unknowns > 120 samples: dual
    for kept in (keep, keep_wide):
        p = gram.fit(kept, w[:, kept], form="primal")
        d = gram.fit(kept, w[:, kept], form="dual")
        assert p[2] == d[2]  # the same alpha wins on the held-out split
        np.testing.assert_allclose(d[0], p[0], rtol=1e-6, atol=1e-8 * np.abs(p[0]).max())
        if fit_bias:
            np.testing.assert_allclose(d[1], p[1], rtol=1e-6, atol=1e-8)
        else:
            assert p[1] is None and d[1] is None
    auto = gram.fit(keep_wide, w[:, keep_wide])
    np.testing.assert_array_equal(auto[0], gram.fit(keep_wide, w[:, keep_wide], form="dual")[0])


def test_blas_single_thread_limits_and_restores():
    from threadpoolctl import threadpool_info

    from onnx_compress import blas

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    with blas.single_thread(100):
        inside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert inside and all(t == 1 for t in inside)
    with blas.single_thread(blas.SMALL + 1):
        big = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert after == before and big == before
