"""Concrete input dims for the cost model: `input_shape`, the calibration data's shapes
and the declared static dims, each input cut along its own batch axis."""
from __future__ import annotations

import numpy as np
import onnx

from . import ir
from .errors import ParameterError

Shape = ir.Shape


def resolve_input_dims(proto: onnx.ModelProto, input_shape=None,
                       data_shapes: dict[str, Shape] | None = None) -> dict[str, Shape]:
    """Concrete shapes for the main graph's inputs.

    Priority: `input_shape` (a tuple, a list of tuples in input order or for just the
    inputs with dynamic dims, or a dict naming any of them), then the shapes of
    calibration data, then static dims. Declared static dims are never overridden by the
    data; its dynamic dims are taken, except each input's batch axis (data.batch_axes:
    `state` [2, 'B', 128] -> axis 1), which is 1, as it is without data. Other dynamic dims
    are left out (their layers cost None).
    """
    from . import data as data_mod

    inputs = ir.graph_inputs(proto)
    specs = data_mod.model_inputs(proto)
    axes = data_mod.batch_axes(specs)
    given = _given_shapes(input_shape, inputs, specs) if input_shape is not None else {}
    dims: dict[str, Shape] = {}
    for inp in inputs:
        declared = specs[inp.name].dims
        if inp.name in given:
            dims[inp.name] = _checked_rank(inp.name, given[inp.name], declared)
            continue
        data = tuple(data_shapes[inp.name]) if data_shapes and inp.name in data_shapes else None
        shape = _filled_dims(declared, data, axes[inp.name])
        if shape is not None:
            dims[inp.name] = shape
    return dims


def _given_shapes(input_shape, inputs: list, specs: dict) -> dict[str, Shape]:
    """`input_shape` as {input name: shape}; ParameterError for a count or name that does
    not match the model's inputs."""
    if isinstance(input_shape, dict):
        given = {k: tuple(int(d) for d in v) for k, v in input_shape.items()}
    else:
        given = _shapes_in_order(list(input_shape), inputs, specs)
    unknown = set(given) - {i.name for i in inputs}
    if unknown:
        raise ParameterError(
            f"input_shape names unknown input(s) {sorted(unknown)}; model inputs: "
            f"{[i.name for i in inputs]}"
        )
    return given


def _shapes_in_order(shapes: list, inputs: list, specs: dict) -> dict[str, Shape]:
    """A shape (a tuple of ints) or a list of shapes: one per input, or one per input with
    dynamic dims, in input order."""
    if shapes and all(isinstance(d, (int, np.integer)) for d in shapes):
        shapes = [tuple(shapes)]
    targets = inputs
    if len(shapes) != len(inputs):
        targets = [i for i in inputs if not specs[i.name].static]
        if len(shapes) != len(targets):
            raise ParameterError(
                f"input_shape gives {len(shapes)} shape(s) but the model has {len(inputs)} "
                f"input(s) {[i.name for i in inputs]}, {len(targets)} of them with dynamic dims "
                f"{[i.name for i in targets]}: give one shape per input, one per dynamic input, "
                "or a dict by name"
            )
    return {i.name: tuple(int(d) for d in s) for i, s in zip(targets, shapes)}


def _checked_rank(name: str, shape: Shape, declared) -> Shape:
    """A given shape, refused when its rank is not the declared one."""
    if declared and len(declared) != len(shape):
        raise ParameterError(
            f"input_shape for '{name}' has rank {len(shape)}, the model expects "
            f"rank {len(declared)}"
        )
    return shape


def _filled_dims(declared, data: Shape | None, batch_axis: int | None) -> Shape | None:
    """An input's shape without input_shape: its static dims, 1 at the batch axis, other
    dynamic dims from the data's shape `data`; None when one stays unknown. Rank unknown:
    the data's shape with batch 1 (None without data)."""
    if declared is None:  # rank unknown: the data's shape, batch 1
        if data is None:
            return None
        return (1, *data[1:]) if data else ()
    if data is not None and len(data) != len(declared):
        data = None  # refused with context where the data is fed
    shape = []
    for k, d in enumerate(declared):
        if isinstance(d, int):
            shape.append(d)
        elif k == batch_axis:
            shape.append(1)
        elif data is not None:
            shape.append(int(data[k]))
        else:
            return None
    return tuple(shape)


# ---------------------------------------------------------------------------- analysis
