"""A seeded generator of random but valid ONNX graphs, shaped like what exporters write.

`generate(seed)` returns `(model, feeds)`: a model that passes `onnx.checker` (full check)
and runs in ONNX Runtime on `feeds`. What a seed can draw:

* a CNN on (N, C, H, W) or (N, C, L) input (Conv 2-D / 1-D with explicit pads or every
  auto_pad form, strides, dilations, groups, depthwise; BatchNormalization; Relu, Sigmoid,
  LeakyRelu, Clip with min/max inputs, HardSwish; residual Add; Concat of branches; Split
  of channels at boundaries other than the Concat's (re-cuts); Slice of channels;
  squeeze-excitation Mul; Max/Average pooling; Resize; Pad; an NHWC Transpose pair; If
  branches with a weight inside the branch) ending in GlobalAveragePool, Flatten or
  Reshape, and a Gemm (transA/transB/alpha/beta) or MatMul head;
* an MLP on (N, F) or (N, T, F): Gemm and MatMul with 2-D or 3-D activations and the
  weight on either side (x @ W, W @ x);
* weights as initializers, Constant nodes, or Identity of an initializer; opsets 11-21
  (ops in the form each opset defines); empty node names; dynamic or fixed batch.

`python tests/fuzzgraphs.py 0-200` runs the fuzz harness (tests/test_fuzz.py) on a seed
range and prints the failures grouped by kind.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSETS = tuple(range(11, 22))
_IR = {11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


class _Builder:
    def __init__(self, rng: np.random.Generator, opset: int):
        self.rng, self.opset = rng, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0
        self.side: tuple[str, list[int]] | None = None  # an extra graph input (name, shape without batch)

    def name(self, op: str) -> str:
        self.n += 1
        return f"{op.lower()}_{self.n}"

    def const(self, value: np.ndarray, weight: bool = False) -> str:
        """A constant: initializer, or (weights, sometimes) a Constant node or an Identity of one."""
        value = np.asarray(value)
        base = self.name("w" if weight else "k")
        how = self.rng.choice(["init", "constant", "identity"], p=[0.6, 0.2, 0.2]) if weight else "init"
        if how == "constant":
            self.nodes.append(helper.make_node("Constant", [], [base], name=self.node_name("Constant"),
                                               value=numpy_helper.from_array(value, base + "_v")))
            return base
        self.inits.append(numpy_helper.from_array(value, base))
        if how == "identity":
            out = base + "_id"
            self.nodes.append(helper.make_node("Identity", [base], [out], name=self.node_name("Identity")))
            return out
        return base

    def node_name(self, op: str) -> str:
        return "" if self.rng.random() < 0.15 else self.name(op)

    def op(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str] | str:
        self.n += 1
        outs = [f"t{self.n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.node_name(op), **attrs))
        return outs if n_out > 1 else outs[0]

    def weight(self, shape, scale=None) -> np.ndarray:
        fan = int(np.prod(shape[1:])) or 1
        return self.rng.normal(0, scale or (1.0 / fan) ** 0.5, shape).astype(np.float32)


# ------------------------------------------------------------------------------ CNNs
def _conv(b: _Builder, x: str, shape: list[int], c_out: int | None = None, *, k: int | None = None,
          group: int | None = None, keep: bool = False) -> tuple[str, list[int]]:
    """A Conv; `keep`: stride 1 and symmetric padding, so the spatial shape is kept."""
    c, spatial = shape[0], shape[1:]
    rng = b.rng
    if group is None:
        group = 1
        r = rng.random()
        if r < 0.15:
            group = c  # depthwise
        elif r < 0.25:
            divs = [g for g in (2, 3, 4) if c % g == 0]
            group = int(rng.choice(divs)) if divs else 1
    if c_out is None:
        c_out = c if group == c else int(rng.integers(1, 25))
    if c_out % group:
        c_out = group * max(1, c_out // group)
    k = k or int(rng.choice([1, 1, 3, 3, 5]))
    dims = len(spatial)
    if keep:
        w = b.const(b.weight((c_out, c // group, *([k] * dims))), weight=True)
        return b.op("Conv", [x, w], kernel_shape=[k] * dims, pads=[k // 2] * (2 * dims), group=group), \
            [c_out, *spatial]
    stride = int(rng.choice([1, 1, 1, 2])) if min(spatial) >= 4 else 1
    dilation = int(rng.choice([1, 1, 1, 2])) if k > 1 and min(spatial) >= 2 * k else 1
    attrs = {"kernel_shape": [k] * dims, "strides": [stride] * dims, "group": group}
    if dilation > 1:
        attrs["dilations"] = [dilation] * dims
    eff = dilation * (k - 1) + 1
    form = rng.choice(["pads", "pads", "same_upper", "same_lower", "valid", "none"])
    if dilation > 1 and form.startswith("same"):  # ONNX Runtime has no dilated SAME convolution
        form = "pads"
    if form == "valid" and min(spatial) < eff:
        form = "pads"
    if form == "pads":
        pads = [int(rng.integers(0, k // 2 + 1)) for _ in range(2 * dims)]
        attrs["pads"] = pads
        out = [(s + pads[i] + pads[i + dims] - eff) // stride + 1 for i, s in enumerate(spatial)]
        if min(out) < 1:
            attrs["pads"] = [eff // 2] * (2 * dims)
            out = [(s + 2 * (eff // 2) - eff) // stride + 1 for s in spatial]
    elif form in ("same_upper", "same_lower"):
        attrs["auto_pad"] = form.upper()
        out = [-(-s // stride) for s in spatial]
    elif form == "valid":
        attrs["auto_pad"] = "VALID"
        out = [(s - eff) // stride + 1 for s in spatial]
    else:
        if min(spatial) < eff:
            attrs["pads"] = [eff // 2] * (2 * dims)
            out = [(s + 2 * (eff // 2) - eff) // stride + 1 for s in spatial]
        else:
            out = [(s - eff) // stride + 1 for s in spatial]
    w = b.const(b.weight((c_out, c // group, *([k] * dims))), weight=True)
    ins = [x, w] + ([b.const(b.weight((c_out,), 0.1), weight=True)] if rng.random() < 0.7 else [])
    return b.op("Conv", ins, **attrs), [c_out, *out]


def _act(b: _Builder, x: str) -> str:
    kind = b.rng.choice(["Relu", "Relu", "Sigmoid", "LeakyRelu", "Clip", "HardSwish"])
    if kind == "LeakyRelu":
        return b.op("LeakyRelu", [x], alpha=0.1)
    if kind == "Clip":
        return b.op("Clip", [x, b.const(np.float32(0.0)), b.const(np.float32(6.0))])
    if kind == "HardSwish" and b.opset < 14:
        kind = "Relu"
    return b.op(kind, [x])


def _bn(b: _Builder, x: str, c: int) -> str:
    rng = b.rng
    p = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)]
    return b.op("BatchNormalization", [x] + [b.const(v.astype(np.float32)) for v in p])


def _split(b: _Builder, x: str, sizes: list[int]) -> list[str]:
    if b.opset >= 13:
        return b.op("Split", [x, b.const(np.array(sizes, np.int64))], n_out=len(sizes), axis=1)
    return b.op("Split", [x], n_out=len(sizes), axis=1, split=sizes)


def _block(b: _Builder, x: str, shape: list[int]) -> tuple[str, list[int]]:
    rng = b.rng
    kind = rng.choice(["conv", "conv", "conv_bn", "residual", "concat", "recut", "slice", "se", "pool",
                       "resize", "pad", "transpose", "if", "side_input"])
    c, spatial = shape[0], shape[1:]
    dims = len(spatial)
    if kind == "conv":
        y, s = _conv(b, x, shape)
        return _act(b, y), s
    if kind == "conv_bn":
        y, s = _conv(b, x, shape)
        return _act(b, _bn(b, y, s[0])), s
    if kind == "residual":
        y, _ = _conv(b, x, shape, c_out=c, k=int(b.rng.choice([1, 3])), group=1, keep=True)
        return b.op("Add", [x, _act(b, y)]), shape
    if kind in ("concat", "recut"):
        k = 1 if rng.random() < 0.5 else 3
        parts = []
        for _ in range(int(rng.integers(2, 4))):
            parts.append(_conv(b, x, shape, k=k, group=1, keep=True))
        same = [p for p in parts if p[1][1:] == parts[0][1][1:]]
        y = b.op("Concat", [p[0] for p in same], axis=1)
        total = sum(p[1][0] for p in same)
        s = [total, *same[0][1][1:]]
        if kind == "recut" and total >= 2:
            cuts = sorted(set(int(v) for v in rng.integers(1, total, size=int(rng.integers(1, 3)))))
            sizes = [hi - lo for lo, hi in zip([0] + cuts, cuts + [total])]
            outs = _split(b, y, sizes)
            convs = [_conv(b, o, [n, *s[1:]], k=1, group=1, keep=True) for o, n in zip(outs, sizes)]
            y = b.op("Concat", [v for v, _ in convs], axis=1)
            s = [sum(v[0] for _, v in convs), *s[1:]]
        return y, s
    if kind == "side_input" and not b.side:  # a second graph input concatenated in (a skip input)
        c2 = int(rng.integers(1, 9))
        b.side = ("skip", [c2, *spatial])
        y, s = _conv(b, x, shape, k=1, group=1, keep=True)
        return b.op("Concat", [y, "skip"][:: 1 if rng.random() < 0.5 else -1], axis=1), [s[0] + c2, *spatial]
    if kind == "slice" and c >= 2:
        lo = int(rng.integers(0, c - 1))
        hi = int(rng.integers(lo + 1, c + 1))
        y = b.op("Slice", [x, b.const(np.array([lo], np.int64)), b.const(np.array([hi], np.int64)),
                           b.const(np.array([1], np.int64))])
        return y, [hi - lo, *spatial]
    if kind == "se":
        gap = b.op("GlobalAveragePool", [x])
        mid, _ = _conv(b, gap, [c, *([1] * dims)], c_out=max(1, c // 2), k=1, group=1, keep=True)
        gate, _ = _conv(b, b.op("Relu", [mid]), [max(1, c // 2), *([1] * dims)], c_out=c, k=1, group=1, keep=True)
        return b.op("Mul", [x, b.op("Sigmoid", [gate])]), shape
    if kind == "pool" and min(spatial) >= 2:
        op = rng.choice(["MaxPool", "AveragePool"])
        y = b.op(op, [x], kernel_shape=[2] * dims, strides=[2] * dims)
        return y, [c, *[s // 2 for s in spatial]]
    if kind == "resize" and dims == 2 and max(spatial) <= 8:
        scales = b.const(np.array([1, 1, 2, 2], np.float32))
        roi = b.const(np.zeros(0, np.float32)) if b.opset < 13 else ""
        y = b.op("Resize", [x, roi, scales], mode="nearest")
        return y, [c, *[2 * s for s in spatial]]
    if kind == "pad":
        pads = [0, 0] + [1] * dims + [0, 0] + [1] * dims
        y = b.op("Pad", [x, b.const(np.array(pads, np.int64))], mode="constant")
        return y, [c, *[s + 2 for s in spatial]]
    if kind == "transpose" and dims == 2:
        t = b.op("Transpose", [x], perm=[0, 2, 3, 1])
        t = b.op("Relu", [t])
        return b.op("Transpose", [t], perm=[0, 3, 1, 2]), shape
    if kind == "if":
        return _if(b, x, shape)
    y, s = _conv(b, x, shape)
    return _act(b, y), s


def _if(b: _Builder, x: str, shape: list[int]) -> tuple[str, list[int]]:
    """If (mean(x) > 0): conv_a(x) else conv_b(x), the weights inside the branches."""
    rng = b.rng
    c, spatial = shape[0], shape[1:]
    dims = len(spatial)
    c_out = int(rng.integers(1, 17))
    mean = b.op("ReduceMean", [x], keepdims=0)
    cond = b.op("Greater", [mean, b.const(np.float32(0.0))])
    out_shape = [c_out, *spatial]

    def branch(tag: str) -> onnx.GraphProto:
        w = numpy_helper.from_array(b.weight((c_out, c, *([1] * dims))), b.name(f"{tag}_w"))
        out = b.name(f"{tag}_y")
        node = helper.make_node("Conv", [x, w.name], [out], name=b.name(f"{tag}_conv"), kernel_shape=[1] * dims)
        return helper.make_graph([node], b.name(tag), [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", c_out, *spatial])], [w])

    y = b.op("If", [cond], then_branch=branch("then"), else_branch=branch("else"))
    return y, out_shape


def _head(b: _Builder, x: str, shape: list[int], classes: int) -> str:
    rng = b.rng
    c = shape[0]
    how = rng.choice(["gap", "flatten", "reshape"])
    if how == "gap" or int(np.prod(shape)) > 2048:
        x = b.op("GlobalAveragePool", [x])
        feat = c
    else:
        feat = int(np.prod(shape))
    if how == "reshape":
        x = b.op("Reshape", [x, b.const(np.array([0, -1], np.int64))])
    else:
        x = b.op("Flatten", [x], axis=1)
    return _dense(b, x, feat, classes)


def _dense(b: _Builder, x: str, k: int, n: int) -> str:
    """Gemm (any transA/transB/alpha/beta) or MatMul, from a 2-D (N, k) tensor to (N, n)."""
    rng = b.rng
    if rng.random() < 0.3:
        return b.op("MatMul", [x, b.const(b.weight((k, n)), weight=True)])
    trans_a, trans_b = int(rng.random() < 0.3), int(rng.random() < 0.6)
    if trans_a:
        x = b.op("Transpose", [x], perm=[1, 0])
    w = b.weight((n, k)) if trans_b else b.weight((k, n))
    attrs = {}
    if trans_a:
        attrs["transA"] = 1
    if trans_b:
        attrs["transB"] = 1
    if rng.random() < 0.3:
        attrs["alpha"] = float(rng.choice([0.5, 2.0]))
    ins = [x, b.const(w, weight=True)]
    if rng.random() < 0.8:
        ins.append(b.const(b.weight((n,), 0.1), weight=True))
        if rng.random() < 0.3:
            attrs["beta"] = float(rng.choice([0.5, 2.0]))
    return b.op("Gemm", ins, **attrs)


# ------------------------------------------------------------------------------- MLPs
def _mlp(b: _Builder, x: str, shape: list[int]) -> tuple[str, list[int]]:
    rng = b.rng
    feats = shape[-1]
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(1, 25))
        if len(shape) == 2:
            x = _dense(b, x, feats, n)
        elif rng.random() < 0.7:  # (N, T, F) @ (F, n)
            x = b.op("MatMul", [x, b.const(b.weight((feats, n)), weight=True)])
            if rng.random() < 0.5:
                x = b.op("Add", [x, b.const(b.weight((n,), 0.1))])
        else:  # W (m, T) @ x (N, T, F): the weight on the left mixes the T axis
            t = shape[1]
            m = int(rng.integers(1, 13))
            x = b.op("MatMul", [b.const(b.weight((m, t)), weight=True), x])
            shape = [shape[0], m, feats]
            x = _act(b, x)
            continue
        feats = n
        shape = shape[:-1] + [n]
        x = _act(b, x)
    return x, shape


# ---------------------------------------------------------------------------- models
def generate(seed: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A random valid model and feeds for it (checked by onnx.checker and ONNX Runtime)."""
    rng = np.random.default_rng(seed)
    opset = int(rng.choice(OPSETS))
    b = _Builder(rng, opset)
    batch = int(rng.integers(1, 4))
    dynamic = rng.random() < 0.6
    family = rng.choice(["cnn2d", "cnn2d", "cnn2d", "cnn1d", "mlp2d", "mlp3d"])
    if family.startswith("cnn"):
        dims = 2 if family == "cnn2d" else 1
        shape = [int(rng.integers(1, 9)), *[int(rng.integers(4, 13)) for _ in range(dims)]]
        x_shape = [batch, *shape]
        y, s = "x", shape
        for _ in range(int(rng.integers(1, 6))):
            y, s = _block(b, y, s)
        y = _head(b, y, s, int(rng.integers(2, 11)))
    else:
        shape = [batch, int(rng.integers(1, 25))] if family == "mlp2d" else \
            [batch, int(rng.integers(1, 9)), int(rng.integers(1, 25))]
        x_shape = shape
        y, _ = _mlp(b, "x", shape)
    shapes = {"x": x_shape}
    if b.side:
        shapes[b.side[0]] = [batch, *b.side[1]]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *sh[1:]] if dynamic else sh)
              for name, sh in shapes.items()]
    graph = helper.make_graph(b.nodes, f"fuzz{seed}", inputs,
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=_IR[opset],
                              producer_name="onnx_compress-fuzz")
    model = onnx.shape_inference.infer_shapes(model)
    if rng.random() < 0.3:  # an intermediate tensor as a second graph output (detector heads, features)
        inner = [v for v in model.graph.value_info if v.type.tensor_type.HasField("shape")
                 and len(v.type.tensor_type.shape.dim) >= 3]
        if inner:
            model.graph.output.append(inner[int(rng.integers(len(inner)))])
    onnx.checker.check_model(model, full_check=True)
    feeds = {name: rng.standard_normal(sh).astype(np.float32) for name, sh in shapes.items()}
    return model, feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import test_fuzz

    lo, _, hi = (sys.argv[1] if len(sys.argv) > 1 else "0-100").partition("-")
    modes = sys.argv[2].split(",") if len(sys.argv) > 2 else ("manual", "auto")
    failures = test_fuzz.run_seeds(range(int(lo), int(hi or lo) + 1), modes)
    print(test_fuzz.summary(failures))
