"""Shape values: what each element of a small integer tensor (a shape, a Reshape target,
Resize sizes, Pad amounts) holds, traced back through the ops that compute it.

An element is ("c", value) a constant, ("d", tensor name, axis) one dimension of a tensor,
or ("e", frozenset of (tensor name, axis)) an expression of dimensions.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import ir
from .channels import _present

if TYPE_CHECKING:
    from .group import Walk


def _deps(elem) -> frozenset:
    if elem[0] == "d":
        return frozenset({(elem[1], elem[2])})
    return elem[1] if elem[0] == "e" else frozenset()


def _binary(op: str, a, b):
    if a[0] == "c" and b[0] == "c":
        x, y = a[1], b[1]
        ints = isinstance(x, int) and isinstance(y, int)
        try:
            value = {"Add": lambda: x + y, "Sub": lambda: x - y, "Mul": lambda: x * y,
                     "Div": lambda: (int(x / y) if ints else x / y), "Mod": lambda: x % y,
                     "Min": lambda: min(x, y), "Max": lambda: max(x, y)}[op]()
        except (ZeroDivisionError, KeyError):
            return ("e", frozenset())
        return ("c", value)
    return ("e", _deps(a) | _deps(b))


def _tainted(elems, key) -> bool:
    return any(key in _deps(e) for e in elems)


def _elems(w: Walk, tensor, depth: int = 0) -> list | None:
    """The elements of a 0-D or 1-D shape-like tensor (see above), or None when unknown."""
    if tensor is None or not tensor.name or depth > 32:
        return None
    if tensor.name not in w.elems:
        w.elems[tensor.name] = _trace_elems(w, tensor, depth)
    return w.elems[tensor.name]


def _trace_elems(w: Walk, tensor, depth: int) -> list | None:
    value = ir.constant_value(tensor)
    if value is not None:
        value = np.asarray(value)
        if value.ndim > 1 or value.size > 64 or value.dtype.kind not in "iuf":
            return None
        return [("c", v.item()) for v in value.reshape(-1)]
    if len(tensor.inputs) != 1:
        return None
    node, op = tensor.inputs[0], tensor.inputs[0].op
    if op in ("Shape", "Size"):
        return _shape_elems(w, node)
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten"):
        return _elems(w, node.inputs[0], depth + 1)
    if op == "Concat":
        out = []
        for t in node.inputs:
            part = _elems(w, t, depth + 1)
            if part is None:
                return None
            out.extend(part)
        return out
    if op == "Gather":
        return _gather_elems(w, node, depth)
    if op == "Slice":
        data = _elems(w, node.inputs[0], depth + 1)
        bounds = _slice_bounds(node, 1)
        if data is None or bounds is None or any(a != 0 for a in bounds):
            return None
        return data[slice(*bounds[0][:3])] if bounds else data
    if op in ("Add", "Sub", "Mul", "Div", "Mod", "Min", "Max"):
        a, b = _elems(w, node.inputs[0], depth + 1), _elems(w, node.inputs[1], depth + 1)
        if a is None or b is None or (len(a) != len(b) and 1 not in (len(a), len(b))):
            return None
        n = max(len(a), len(b))
        return [_binary(op, a[i % len(a)], b[i % len(b)]) for i in range(n)]
    return None


def _shape_elems(w: Walk, node) -> list | None:
    """The elements of a Shape or Size node's output."""
    shape = w.shape(node.inputs[0])
    if shape is None:
        return None
    name = node.inputs[0].name
    if node.op == "Size":
        return [("e", frozenset((name, i) for i in range(len(shape))))]
    dims = range(len(shape))[slice(node.attrs.get("start", 0), node.attrs.get("end", None))]
    return [("d", name, i) for i in dims]


def _gather_elems(w: Walk, node, depth: int) -> list | None:
    """The elements a Gather with constant indices picks from a shape value."""
    data, idx = _elems(w, node.inputs[0], depth + 1), ir.constant_value(node.inputs[1])
    if data is None or idx is None or int(node.attrs.get("axis", 0)) != 0:
        return None
    flat = [int(i) + (len(data) if i < 0 else 0) for i in np.asarray(idx).reshape(-1)]
    return [data[i] for i in flat] if all(0 <= i < len(data) for i in flat) else None


def _slice_bounds(node, rank: int) -> dict[int, tuple[int, int, int, int]] | None:
    """{axis: (start, end, step, entry)} of a Slice with constant bounds (None when computed);
    `entry` is the axis' place in the starts/ends lists."""
    if "starts" in node.attrs:  # opset < 10
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        values = []
        for slot in (1, 2, 3, 4):
            t = node.inputs[slot] if slot < len(node.inputs) else None
            if not _present(t):
                values.append(None)
                continue
            v = ir.constant_value(t)
            if v is None:
                return None
            values.append([int(x) for x in np.asarray(v).reshape(-1)])
        starts, ends, axes, steps = values
        if starts is None or ends is None:
            return None
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
    return {int(a) % rank: (int(s), int(e), int(st), j)
            for j, (a, s, e, st) in enumerate(zip(axes, starts, ends, steps))}
