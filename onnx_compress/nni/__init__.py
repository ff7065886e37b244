"""NNI's compressor API (its early "Compressor Overview") on ONNX models: port an NNI
script by changing the imports, the model (an ONNX path or ModelProto, layers named by
ONNX node name) and the data.

    import onnx_compress.nni as nni
    pruner = nni.LevelPruner([{'sparsity': 0.8, 'op_types': 'default'}])
    pruned = pruner('model.onnx')          # an onnx.ModelProto; pruner.masks, pruner.stats
    pruner.export_model('pruned.onnx', 'masks.npz')
    fast, stats = nni.speedup(pruned)      # NNI's ModelSpeedup: whole zeroed channels removed
"""
from __future__ import annotations

from .pruner import LayerSparsity, LevelPruner, Pruner, SparsityStats, level_mask, nm_mask
from .quantizer import (AGP_Pruner, AGPPruner, DoReFaQuantizer, NaiveQuantizer, QAT_Quantizer, Quantizer,
                        SensitivityPruner, fake_quantize)
from .speedup import GroupSpeedup, ModelSpeedup, SpeedupStats, apply_masks, speedup

__all__ = ["Pruner", "LevelPruner", "SparsityStats", "LayerSparsity", "level_mask", "nm_mask", "Quantizer",
           "NaiveQuantizer", "QAT_Quantizer", "DoReFaQuantizer", "AGP_Pruner", "AGPPruner", "SensitivityPruner",
           "fake_quantize", "speedup", "ModelSpeedup", "SpeedupStats", "GroupSpeedup", "apply_masks"]
