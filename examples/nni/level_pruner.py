"""NNI's Overview.md examples (level pruner, config_list, update_epoch/step, a custom
pruner and quantizer) and ModelSpeedup, ported to ONNX: only the imports, the model and the data change.

Run it: python examples/nni/level_pruner.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import onnx_compress.nni as nni
from onnx_compress import evaluators, ir
from onnx_compress.runtime import sessions

MODELS = Path(__file__).resolve().parents[2] / "models"
MODEL = MODELS / "vgg_small.onnx"


def accuracy(model) -> float:
    return sessions.evaluate(ir.load(model), evaluators.accuracy(MODELS / "digits32_test.npz"), None, False)


class YourPruner(nni.Pruner):
    """The doc's custom pruner: here, zero the weakest half of each layer's output filters."""

    def calc_mask(self, weight, config, **kwargs):
        norms = np.abs(weight.reshape(weight.shape[0], -1)).sum(axis=1)
        mask = np.ones_like(weight, dtype=bool)
        mask[np.argsort(norms, kind="stable")[: int(config.get("sparsity", 0.5) * len(norms))]] = False
        return mask


class YourQuantizer(nni.Quantizer):
    """The doc's custom quantizer: weights rounded to 4 bits per tensor."""

    def quantize_weight(self, weight, config, **kwargs):
        scale = np.abs(weight).max() / 7
        return np.round(weight / scale) * scale


def main() -> dict[str, float]:
    out = {"float": accuracy(MODEL)}
    config_list = [{'sparsity': 0.8, 'op_types': 'default'}]
    pruner = nni.LevelPruner(config_list)
    pruned = pruner(MODEL)
    out["level 0.8"], out["level 0.8 sparsity"] = accuracy(pruned), pruner.stats.total
    names = [layer.name for layer in ir_layers()]
    config_list = [{'sparsity': 0.8, 'op_types': 'default'},
                   {'sparsity': 0.6, 'op_names': [names[1], names[2]]},
                   {'exclude': True, 'op_names': [names[0]]}]
    pruner = nni.LevelPruner(config_list)
    pruned = pruner(MODEL)
    for epoch in range(2):
        pruner.update_epoch(epoch)
        pruner.step()
    out["config_list"], out["config_list sparsity"] = accuracy(pruned), pruner.stats.total
    out["2:4"] = accuracy(nni.LevelPruner([{'op_types': 'default'}], n_m=(2, 4))(MODEL))
    masked = YourPruner([{'sparsity': 0.25, 'op_types': 'Conv'}])(MODEL)
    out["YourPruner 0.25"] = accuracy(masked)
    # NNI's ModelSpeedup: the zeroed filters leave the graph, so the MACs really fall
    fast = nni.ModelSpeedup(masked, None, None)
    out["speedup"] = accuracy(fast.speedup_model())
    out["speedup MAC ratio"] = fast.stats.mac_ratio
    out["YourQuantizer"] = accuracy(YourQuantizer([{'op_types': 'default'}])(MODEL))
    for key, value in out.items():
        print(f"{key:22s} {value:.4f}")
    return out


def ir_layers():
    from onnx_compress import inspect
    return inspect(str(MODEL)).compressible


if __name__ == "__main__":
    main()
