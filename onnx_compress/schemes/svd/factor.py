"""Weight SVD and spatial SVD: factor a layer's weight and describe the replacement nodes.

Pure numpy on arrays, plus `NodeSpec`s that the IR turns into nodes. Nothing here runs
a model.

Weight SVD (AIMET's split). Conv weight W (n_out, n_in, *k) seen as the matrix
M[(o, *k), i] = U S V^T becomes a 1x1 conv (rank, n_in, 1..) followed by a conv
(n_out, rank, *k) that keeps stride, pads, dilation, auto_pad and bias. Gemm/MatMul
weight (K, N) becomes (K, rank) then (rank, N). An LSTM/GRU's input weight W becomes a
MatMul in front of the op and a W of input size rank (`recurrent`).

Spatial SVD (Jaderberg et al. 2014). Conv weight seen as M[(i, y), (o, x)] becomes a
(rank, n_in, kh, 1) conv carrying the vertical stride/pads/dilation, then an
(n_out, rank, 1, kw) conv carrying the horizontal ones and the bias.

Both split the singular values as sqrt(S) into each factor, so both are well scaled.
"""
from __future__ import annotations

import math

import numpy as np

from ... import blas
from ...cost import RankCost
from ...errors import ShapeError
from ...ir import NodeSpec
from ...layers import Layer
from . import recurrent


def truncated_svd(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Factor `matrix` (m, n) as A (m, rank) @ B (rank, n), the best rank-`rank` approximation.

    Computed in float64; each factor carries sqrt of the singular values.
    """
    u, s, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def whitened_svd(matrix: np.ndarray, cov: np.ndarray | None, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Data-aware rank-`rank` factors of `matrix` (K, N) used as y = x @ matrix.

    With the inputs' second moment cov = E[x x^T] (K, K) = L L^T (Cholesky, small ridge),
    minimises E||x (W - A B)||^2 = ||L^T (W - A B)||_F^2: truncated SVD of L^T W, then
    A = L^-T U sqrt(S) (K, rank), B = sqrt(S) V^T (rank, N) (SVD-LLM / activation-aware
    SVD). cov None: plain truncated SVD.
    """
    if cov is None:
        return truncated_svd(matrix, rank)
    a, b = whitened_factors(matrix, cov)
    return a[:, :rank], b[:rank]


def whitened_factors(matrix: np.ndarray, cov: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """All-rank factors A (K, m), B (m, N), m = min(K, N): whitened_svd at rank r is
    A[:, :r], B[:r] (plain SVD when cov is None). One factorisation serves every rank."""
    w = np.asarray(matrix, dtype=np.float64)
    with blas.single_thread(max(w.shape)):
        if cov is None:
            return truncated_svd(w, min(w.shape))
        c = np.asarray(cov, dtype=np.float64)
        ridge = 1e-6 * max(np.trace(c) / len(c), 1e-12)
        chol = np.linalg.cholesky(c + ridge * np.eye(len(c)))
        u, s, vt = np.linalg.svd(chol.T @ w, full_matrices=False)
        root = np.sqrt(s)
        return np.linalg.solve(chol.T, u * root), root[:, None] * vt


def singular_values(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)


# ------------------------------------------------------------------------ eligibility
def _conv_group_reason(layer: Layer) -> str | None:
    g = layer.group
    if g == 1:
        return None
    if g == layer.weight.shape[0] and layer.weight.shape[1] == 1:
        return f"depthwise conv, group={g}"
    return f"grouped conv, group={g}"


def check_weight_svd(layer: Layer) -> str | None:
    """Why weight SVD cannot apply to `layer`, or None when it can."""
    if layer.reason:
        return layer.reason
    if layer.op == "Conv":
        return _conv_group_reason(layer)
    return None


def check_spatial_svd(layer: Layer) -> str | None:
    """Why spatial SVD cannot apply to `layer`, or None when it can."""
    if layer.reason:
        return layer.reason
    if layer.recurrent:
        return f"{layer.op}: not a convolution (spatial SVD applies to Conv only)"
    if layer.op != "Conv":
        return f"{layer.op}: spatial SVD applies to Conv only"
    nd = layer.weight.ndim - 2
    if nd != 2:
        return f"{nd}-D conv: spatial SVD needs a 2-D kernel"
    reason = _conv_group_reason(layer)
    if reason:
        return reason
    if layer.kernel == (1, 1):
        return "1x1 kernel: spatial SVD does not apply"
    auto_pad = _auto_pad(layer)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and layer.in_shape is None:
        return f"auto_pad={auto_pad} with an unknown input size ({layer.shape_note})"
    return None


# ------------------------------------------------------------------------------ costs
def _positions(shape) -> int:
    """Batch x spatial positions of an (N, C, *spatial) tensor."""
    return shape[0] * math.prod(shape[2:])


def _need_shapes(layer: Layer) -> None:
    if layer.in_shape is None or layer.out_shape is None:
        raise ShapeError(f"layer '{layer.name}': input/output shapes unknown: "
                         f"{layer.shape_note}")


def weight_svd_cost(layer: Layer, metric: str) -> RankCost:
    """Cost of the weight-SVD split of `layer` as a function of rank."""
    w = layer.weight
    if layer.recurrent:
        return recurrent.cost(layer, metric)
    if layer.op == "Conv":
        n_out, n_in = w.shape[:2]
        ksize = math.prod(w.shape[2:])
        full = min(n_in, n_out * ksize)
        if metric == "memory":
            return RankCost(int(w.size), n_in + n_out * ksize, full)
        _need_shapes(layer)
        per = _positions(layer.in_shape) * n_in + _positions(layer.out_shape) * n_out * ksize
        return RankCost(layer.mac, per, full)
    k, n = layer.matrix_shape()
    if metric == "memory":
        return RankCost(k * n, k + n, min(k, n))
    _need_shapes(layer)
    rows = math.prod(layer.out_shape[:-1])
    return RankCost(layer.mac, rows * (k + n), min(k, n))


def spatial_svd_cost(layer: Layer, metric: str) -> RankCost:
    """Cost of the spatial-SVD split of a 2-D conv as a function of rank."""
    n_out, n_in, kh, kw = layer.weight.shape
    full = min(n_in * kh, n_out * kw)
    if metric == "memory":
        return RankCost(int(layer.weight.size), n_in * kh + n_out * kw, full)
    _need_shapes(layer)
    batch, _, h_out, w_out = layer.out_shape
    w_in = layer.in_shape[3]
    per = batch * h_out * w_in * n_in * kh + batch * h_out * w_out * n_out * kw
    return RankCost(layer.mac, per, full)


# ---------------------------------------------------------------------------- rewrites
def _auto_pad(layer: Layer) -> str:
    value = layer.attrs.get("auto_pad", "NOTSET")
    return value.decode() if isinstance(value, bytes) else str(value)


def _bias_inputs(layer: Layer) -> tuple[int, ...]:
    node = layer.node
    has_bias = len(node.inputs) > 2 and node.inputs[2].name != ""
    return (2,) if has_bias else ()


def weight_svd_specs(layer: Layer, rank: int, opset: int, cov: np.ndarray | None = None) -> list[NodeSpec]:
    """The two nodes that replace `layer` under weight SVD at `rank`.

    `cov`: second moment of the layer's inputs (see `input_moment`) for data-aware SVD.
    """
    w = layer.weight
    if layer.recurrent:
        return recurrent.specs(layer, *whitened_svd(recurrent.x_matrix(w), cov, rank))
    if layer.op == "Conv":
        n_out, n_in = w.shape[:2]
        kernel = w.shape[2:]
        matrix = np.moveaxis(w, 1, -1).reshape(-1, n_in)  # [(o, *k), i]
        at, bt = whitened_svd(matrix.T, cov, rank)  # x-form: (n_in, r), (r, n_out*K)
        b, a = bt.T, at.T  # b: (n_out*K, r), a: (r, n_in)
        first = a.reshape(rank, n_in, *([1] * len(kernel))).astype(w.dtype)
        second = np.moveaxis(b.reshape(n_out, *kernel, rank), -1, 1).astype(w.dtype)
        attrs2 = {k: v for k, v in layer.attrs.items() if k not in ("group", "kernel_shape")}
        attrs2["kernel_shape"] = list(kernel)
        return [
            NodeSpec("Conv", (first,), {"kernel_shape": [1] * len(kernel)}),
            NodeSpec("Conv", (second,), attrs2, _bias_inputs(layer)),
        ]
    k, n = layer.matrix_shape()
    matrix = w.T if (layer.op == "Gemm" and int(layer.attrs.get("transB", 0))) else w
    a, b = whitened_svd(matrix, cov, rank)
    a, b = a.astype(w.dtype), b.astype(w.dtype)
    if layer.op == "MatMul":
        return [NodeSpec("MatMul", (a,)), NodeSpec("MatMul", (b,))]
    attrs = layer.attrs
    first_params = (a,) if opset >= 11 else (a, np.zeros(rank, dtype=w.dtype))
    first = NodeSpec("Gemm", first_params, {"transA": int(attrs.get("transA", 0))})
    attrs2 = {"alpha": float(attrs.get("alpha", 1.0)), "transB": 0}
    extra = _bias_inputs(layer)
    if extra:
        attrs2["beta"] = float(attrs.get("beta", 1.0))
        return [first, NodeSpec("Gemm", (b,), attrs2, extra)]
    second_params = (b,) if opset >= 11 else (b, np.zeros(n, dtype=w.dtype))
    return [first, NodeSpec("Gemm", second_params, attrs2)]


def explicit_pads(layer: Layer) -> list[int]:
    """The conv's pads as explicit (begin..., end...) values, resolving auto_pad."""
    nd = layer.weight.ndim - 2
    auto_pad = _auto_pad(layer)
    if auto_pad in ("NOTSET", ""):
        return [int(p) for p in layer.attrs.get("pads", [0] * (2 * nd))]
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    strides = layer.attrs.get("strides", [1] * nd)
    dilations = layer.attrs.get("dilations", [1] * nd)
    begin, end = [], []
    for size, k, s, d in zip(layer.in_shape[2:], layer.kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin + end


def spatial_svd_specs(layer: Layer, rank: int, opset: int, cov: np.ndarray | None = None) -> list[NodeSpec]:
    """The two nodes that replace a 2-D conv under spatial SVD at `rank` (`cov`: data-aware)."""
    w = layer.weight
    n_out, n_in, kh, kw = w.shape
    matrix = w.transpose(1, 2, 0, 3).reshape(n_in * kh, n_out * kw)  # [(i, y), (o, x)]
    a, b = whitened_svd(matrix, cov, rank)  # a: (n_in*kh, r), b: (r, n_out*kw)
    first = a.reshape(n_in, kh, rank).transpose(2, 0, 1)[..., None].astype(w.dtype)
    second = b.reshape(rank, n_out, kw).transpose(1, 0, 2)[:, :, None, :].astype(w.dtype)
    sh, sw = layer.attrs.get("strides", [1, 1])
    dh, dw = layer.attrs.get("dilations", [1, 1])
    top, left, bottom, right = explicit_pads(layer)
    attrs1 = {"kernel_shape": [kh, 1], "strides": [sh, 1], "pads": [top, 0, bottom, 0],
              "dilations": [dh, 1]}
    attrs2 = {"kernel_shape": [1, kw], "strides": [1, sw], "pads": [0, left, 0, right],
              "dilations": [1, dw]}
    return [NodeSpec("Conv", (first,), attrs1), NodeSpec("Conv", (second,), attrs2, _bias_inputs(layer))]


# ------------------------------------------------------------------ same-shaped weights
def low_rank_weight(layer: Layer, scheme: str, rank: int, cov: np.ndarray | None = None,
                    factors: dict | None = None) -> np.ndarray:
    """The layer's weight as the split computes it at `rank`, in the stored shape and dtype.

    A model with this weight swapped in computes what the split model computes (up to
    rounding), so candidates can be scored without rebuilding the graph. `factors`: a
    dict kept by the caller across ranks of one layer (same scheme and cov); the
    factorisation is computed once and truncated per rank.
    """
    w = layer.weight
    ab = None if factors is None else factors.get("ab")
    if ab is None:
        ab = whitened_factors(_factored_matrix(layer, scheme), cov)
        if factors is not None:
            factors["ab"] = ab
    a, b = ab
    approx = a[:, :rank] @ b[:rank]
    if layer.recurrent:
        return recurrent.stored_weight(approx, w.shape).astype(w.dtype)
    if layer.op == "Conv" and scheme == "weight_svd":
        n_in = w.shape[1]
        return np.moveaxis(approx.T.reshape(w.shape[0], *w.shape[2:], n_in), -1, 1).astype(w.dtype)
    if layer.op == "Conv":  # spatial SVD
        n_out, n_in, kh, kw = w.shape
        return approx.reshape(n_in, kh, n_out, kw).transpose(2, 0, 1, 3).astype(w.dtype)
    trans = layer.op == "Gemm" and int(layer.attrs.get("transB", 0))
    return (approx.T if trans else approx).astype(w.dtype)


def _factored_matrix(layer: Layer, scheme: str) -> np.ndarray:
    """The matrix the SVD factors (x-form, y = x @ M) for low_rank_weight."""
    w = layer.weight
    if layer.recurrent:
        return recurrent.x_matrix(w)
    if layer.op == "Conv" and scheme == "weight_svd":
        return np.moveaxis(w, 1, -1).reshape(-1, w.shape[1]).T
    if layer.op == "Conv":
        n_out, n_in, kh, kw = w.shape
        return w.transpose(1, 2, 0, 3).reshape(n_in * kh, n_out * kw)
    trans = layer.op == "Gemm" and int(layer.attrs.get("transB", 0))
    return w.T if trans else w


def relative_errors(layer: Layer, scheme: str) -> np.ndarray:
    """||W - W_r||_F / ||W||_F for r = 0 .. full rank (index r), from the singular values."""
    w = layer.weight
    if layer.recurrent:
        matrix = recurrent.x_matrix(w)
    elif layer.op == "Conv" and scheme == "weight_svd":
        matrix = np.moveaxis(w, 1, -1).reshape(-1, w.shape[1])
    elif layer.op == "Conv":
        n_out, n_in, kh, kw = w.shape
        matrix = w.transpose(1, 2, 0, 3).reshape(n_in * kh, n_out * kw)
    else:
        matrix = w
    s2 = singular_values(matrix) ** 2
    tail = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])
    return np.sqrt(tail / max(s2.sum(), 1e-300))


def moment_kernel(layer: Layer, scheme: str) -> tuple | None:
    """How to sample the inputs whose second moment data-aware SVD needs.

    Returns (kernel, strides, pads, dilations) for `patches.conv_patches` on the
    layer's input: one input-channel vector per position for weight SVD of a conv, the
    vertical (kh x 1) patches of spatial SVD; None for Gemm/MatMul (input rows) and
    LSTM/GRU (X's rows: one time step of one sequence each, as W projects them).
    """
    if layer.op != "Conv":
        return None
    nd = layer.weight.ndim - 2
    if scheme == "weight_svd":
        return [1] * nd, [1] * nd, [0] * (2 * nd), [1] * nd
    kh = layer.kernel[0]
    sh = layer.attrs.get("strides", [1, 1])[0]
    dh = layer.attrs.get("dilations", [1, 1])[0]
    top, _, bottom, _ = explicit_pads(layer)
    return [kh, 1], [sh, 1], [top, 0, bottom, 0], [dh, 1]
