"""NNI's pruners on ONNX models: the `Pruner` base (override `calc_mask`) and `LevelPruner`.

`pruner(model)` (or `pruner.compress(model)`) returns the pruned ModelProto: each matched
layer's weight times its mask. The masks stay in `pruner.masks`, the figures in
`pruner.stats` (counted on the written weights); `pruner.export_model(path, mask_path)`
writes the model and the masks (.npz, one bool array per layer name).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from .. import ir
from ..errors import ParameterError
from . import config as nni_config
from . import weights as wmod


@dataclass(frozen=True)
class LayerSparsity:
    """One layer: the sparsity asked for (None when the config names none), the fraction
    of zeros in the written weight, and the counts."""

    name: str
    op: str
    target: float | None
    achieved: float
    zeros: int
    size: int


@dataclass(frozen=True)
class SparsityStats:
    """Per layer target and achieved sparsity, and the total over the pruned layers."""

    layers: tuple[LayerSparsity, ...]

    @property
    def total(self) -> float:
        size = sum(s.size for s in self.layers)
        return sum(s.zeros for s in self.layers) / size if size else 0.0

    def __getitem__(self, name: str) -> LayerSparsity:
        for s in self.layers:
            if s.name == name:
                return s
        raise KeyError(name)

    def __str__(self) -> str:
        rows = [f"{'layer':44s} {'op':6s} {'target':>7s} {'achieved':>8s} {'zeros':>9s} {'size':>9s}"]
        for s in self.layers:
            target = "-" if s.target is None else f"{s.target:.4f}"
            rows.append(f"{s.name:44s} {s.op:6s} {target:>7s} {s.achieved:8.4f} {s.zeros:9d} {s.size:9d}")
        rows.append(f"{'total':44s} {'':6s} {'':>7s} {self.total:8.4f}")
        return "\n".join(rows)


def _target(cfg: dict, n_m) -> float | None:
    if "sparsity" in cfg:
        return float(cfg["sparsity"])
    nm = cfg.get("nm", n_m)
    return None if nm is None else 1 - nm[0] / nm[1]


class Pruner:
    """NNI's pruner interface. Override `calc_mask(weight, config, **kwargs)`: `weight`
    is the layer's weight (numpy, as stored in ONNX), `config` the config_list dict that
    applies to it; kwargs `op_name` (the ONNX node name), `op_type` ('Conv', 'Gemm',
    'MatMul') and `op` (the onnx NodeProto). Return a mask of the weight's shape (bool or
    0/1): the weight is multiplied by it."""

    #: config keys of this pruner beyond op_types / op_names / exclude
    keys: tuple[str, ...] = ("sparsity", "nm")

    def __init__(self, config_list):
        self.config_list = config_list
        nni_config.parse(config_list, self.keys, self._check_entry)
        self.masks: dict[str, np.ndarray] = {}
        self.stats: SparsityStats | None = None
        self.model: onnx.ModelProto | None = None

    def _check_entry(self, item: dict, where: str) -> None:
        nni_config.check_sparsity(item, where, need=False)

    def bind_model(self, model: onnx.ModelProto) -> None:
        """Called with the model (a private ModelProto copy) before the masks are made."""

    def calc_mask(self, weight: np.ndarray, config: dict, **kwargs) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must override calc_mask(weight, config, **kwargs)")

    def update_epoch(self, epoch, sess=None) -> None:
        """Allowed, no effect: the masks are computed once on the ONNX graph."""

    def step(self, sess=None) -> None:
        """Allowed, no effect (there is no training loop on an ONNX graph)."""

    def __call__(self, model) -> onnx.ModelProto:
        """The pruned copy of `model` (a path or ModelProto; not modified)."""
        proto, analysis = wmod.load(model)
        self.bind_model(proto)
        configs = nni_config.resolve(self.config_list, analysis.layers, self.keys, self._check_entry)
        nodes = wmod.node_protos(proto)
        by_name = {layer.name: layer for layer in analysis.layers}
        masks, new = {}, {}
        for name, cfg in configs.items():
            layer = by_name[name]
            w = layer.weight
            raw = self.calc_mask(np.array(w), cfg, op_name=name, op_type=layer.op, op=nodes.get(name))
            mask = wmod.checked(raw, w, name, "calc_mask") != 0
            masks[name] = mask
            new[name] = np.where(mask, w, np.zeros((), w.dtype))
        out = wmod.rewrite(proto, analysis, new)
        written = wmod.weights_of(out)
        n_m = getattr(self, "n_m", None)
        self.stats = SparsityStats(tuple(
            LayerSparsity(name, by_name[name].op, _target(cfg, n_m), float(np.mean(written[name] == 0)),
                          int(np.count_nonzero(written[name] == 0)), int(written[name].size))
            for name, cfg in configs.items()))
        self.masks, self.model = masks, out
        return out

    def compress(self, model) -> onnx.ModelProto:
        """Alias of calling the pruner."""
        return self(model)

    def export_model(self, model_path: str | os.PathLike, mask_path: str | os.PathLike | None = None) -> None:
        """Write the pruned model (ONNX) and, with `mask_path`, the masks (.npz: layer name
        -> bool array of the weight's shape)."""
        if self.model is None:
            raise ParameterError("export_model: nothing to export yet; call the pruner on a model first (pruner(model))")
        ir.save(self.model, model_path)
        if mask_path is not None:
            with open(mask_path, "wb") as f:
                np.savez(f, **self.masks)


def level_mask(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero exactly round(sparsity * size) entries: the smallest by magnitude, ties broken
    by position (the earlier one in C order goes first)."""
    k = round(float(sparsity) * weight.size)
    order = np.argsort(np.abs(weight), axis=None, kind="stable")
    mask = np.ones(weight.size, dtype=bool)
    mask[order[:k]] = False
    return mask.reshape(weight.shape)


def nm_mask(weight: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """N:M sparsity: in every run of M consecutive weights along `axis` keep the N largest
    by magnitude (ties: the earlier one); a shorter last run keeps min(N, its length)."""
    w = np.moveaxis(np.abs(weight), axis, -1)
    mask = np.ones(w.shape, dtype=bool)
    for start in range(0, w.shape[-1], m):
        block = w[..., start:start + m]
        if block.shape[-1] <= n:
            continue
        drop = np.argsort(-block, axis=-1, kind="stable")[..., n:]
        view = mask[..., start:start + m]
        np.put_along_axis(view, drop, False, axis=-1)
    return np.moveaxis(mask, -1, axis)


class LevelPruner(Pruner):
    """NNI's Level Pruner: in each matched layer, zero the smallest-magnitude weights to
    `sparsity` exactly. `n_m=(N, M)` (or an entry's 'nm') prunes N:M instead: in every M
    consecutive weights along the input-channel axis the N largest stay."""

    def __init__(self, config_list, n_m: tuple[int, int] | None = None):
        self.n_m = None if n_m is None else nni_config.check_nm(n_m, "n_m")
        super().__init__(config_list)

    def _check_entry(self, item: dict, where: str) -> None:
        nni_config.check_sparsity(item, where, need=self.n_m is None)

    def calc_mask(self, weight: np.ndarray, config: dict, **kwargs) -> np.ndarray:
        if "sparsity" in config:
            return level_mask(weight, config["sparsity"])
        n, m = config.get("nm", self.n_m)
        return nm_mask(weight, n, m, wmod.input_axis(kwargs.get("op_type", ""), kwargs.get("op")))
