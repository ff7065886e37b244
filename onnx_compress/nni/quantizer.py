"""NNI's quantizers on ONNX models: the `Quantizer` base (override `quantize_weight`),
`NaiveQuantizer`, and the training-time algorithms, refused with the reason."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import ParameterError
from . import config as nni_config
from . import weights as wmod


def _check_bits(item: dict, where: str) -> None:
    bits = item.get("q_bits", 8)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ParameterError(f"{where}: 'q_bits' must be an integer in [2, 16], got {bits!r}")


class Quantizer:
    """NNI's quantizer interface. Override `quantize_weight(weight, config, **kwargs)`
    (kwargs op_name, op_type, op as for Pruner.calc_mask) and return the new weight; it
    is written back as float (fake-quantized)."""

    keys: tuple[str, ...] = ("q_bits",)

    def __init__(self, config_list):
        self.config_list = config_list
        nni_config.parse(config_list, self.keys, _check_bits)
        self.model: onnx.ModelProto | None = None

    def bind_model(self, model: onnx.ModelProto) -> None:
        """Called with the model (a private ModelProto copy) before the weights change."""

    def quantize_weight(self, weight: np.ndarray, config: dict, **kwargs) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must override quantize_weight(weight, config, **kwargs)")

    def update_epoch(self, epoch, sess=None) -> None:
        """Allowed, no effect."""

    def step(self, sess=None) -> None:
        """Allowed, no effect."""

    def __call__(self, model) -> onnx.ModelProto:
        proto, analysis = wmod.load(model)
        self.bind_model(proto)
        configs = nni_config.resolve(self.config_list, analysis.layers, self.keys, _check_bits)
        nodes = wmod.node_protos(proto)
        by_name = {layer.name: layer for layer in analysis.layers}
        new = {}
        for name, cfg in configs.items():
            layer = by_name[name]
            out = self.quantize_weight(np.array(layer.weight), cfg, op_name=name, op_type=layer.op,
                                       op=nodes.get(name))
            new[name] = wmod.checked(out, layer.weight, name, "quantize_weight")
        self.model = wmod.rewrite(proto, analysis, new)
        return self.model

    def compress(self, model) -> onnx.ModelProto:
        return self(model)


def fake_quantize(weight: np.ndarray, bits: int = 8, axis: int = 0) -> np.ndarray:
    """Symmetric per-channel (along `axis`) rounding to `bits`-bit integers, back as float."""
    levels = 2 ** (bits - 1) - 1
    w = np.moveaxis(weight.astype(np.float64), axis, 0)
    scale = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / levels
    scale = np.where(scale > 0, scale, 1.0).reshape((-1,) + (1,) * (w.ndim - 1))
    return np.moveaxis(np.clip(np.round(w / scale), -levels, levels) * scale, 0, axis).astype(weight.dtype)


class NaiveQuantizer(Quantizer):
    """NNI's Naive Quantizer: weights to 8 bits. Without `data` the weights are
    fake-quantized (symmetric, per output channel, written back as float, as NNI's does);
    with `data` (calibration data) the model goes through ONNX Runtime's static int8
    quantization (`onnx_compress.runtime.quantize`: int8 weights per channel and int8
    activations), the hand-off `onnx-compress quantize` / `--quantize int8` uses.

    `weights_only=True` (no data needed): real int8 weights through ONNX Runtime's
    weight-only quantization instead of fake quantization (precision "int8-weight": the
    MatMul and Gemm weights stored as int8 per output column, activations quantized at
    run time, not calibrated; `--quantize int8-weight`); with `q_bits` 4 for
    every layer, int4 weights (MatMulNBits, `--quantize int4`). Conv weights stay float
    there (ORT's weight-only kernels take MatMuls); a model without MatMul or Gemm weights
    is refused."""

    def __init__(self, config_list=None, data=None, weights_only: bool = False):
        super().__init__([{"op_types": "default"}] if config_list is None else config_list)
        if weights_only and data is not None:
            raise ParameterError("NaiveQuantizer: give data (static int8 weights and activations) or "
                                 "weights_only=True (int8 weights, no data), not both")
        self.data = data
        self.weights_only = bool(weights_only)

    def quantize_weight(self, weight: np.ndarray, config: dict, **kwargs) -> np.ndarray:
        axis = 1 - wmod.input_axis(kwargs.get("op_type", ""), kwargs.get("op")) if weight.ndim == 2 else 0
        return fake_quantize(weight, int(config.get("q_bits", 8)), axis)

    def __call__(self, model) -> onnx.ModelProto:
        if self.data is None and not self.weights_only:
            return super().__call__(model)
        from ..runtime import quantize as rq

        _, analysis = wmod.load(model)
        configs = nni_config.resolve(self.config_list, analysis.layers, self.keys, _check_bits)
        usable = [layer.name for layer in analysis.layers if layer.reason is None]
        bits = {c.get("q_bits", 8) for c in configs.values()}
        allowed = ({4}, {8}) if self.weights_only else ({8},)
        if sorted(configs) != sorted(usable) or bits not in allowed:
            how = "to int8 (or every layer to 4 bits)" if self.weights_only else "to int8"
            what = "weights_only=True" if self.weights_only else "data"
            raise ParameterError(f"NaiveQuantizer with {what} quantizes every layer {how} through ONNX Runtime; "
                                 f"use config_list=None (or leave {what} out for per-layer fake quantization)")
        if self.weights_only:
            self.model = rq.quantize(model, precision="int4" if bits == {4} else "int8-weight")
        else:
            self.model = rq.quantize(model, self.data)
        return self.model


_TRAINING = ("it needs training (masks or quantization ranges updated by gradient steps), which an ONNX graph "
             "tool does not do: quantize with NaiveQuantizer(data=...) or `onnx-compress compress ... --quantize "
             "int8`, or prune with LevelPruner / onnx_compress.compress_auto(model, ..., trainer=...) (auto mode's "
             "trainer hook), then fine-tune the returned model in your framework")


def _refused(cls_name: str):
    def __init__(self, *args, **kwargs):
        raise ParameterError(f"{cls_name} is not available on ONNX models: {_TRAINING}")
    return type(cls_name, (), {"__init__": __init__, "__doc__": f"NNI's {cls_name}: refused ({_TRAINING})."})


QAT_Quantizer = _refused("QAT_Quantizer")
DoReFaQuantizer = _refused("DoReFaQuantizer")
AGP_Pruner = _refused("AGP_Pruner")
AGPPruner = AGP_Pruner
SensitivityPruner = _refused("SensitivityPruner")
