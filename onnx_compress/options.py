"""Options shared by the schemes and the search: frozen dataclasses, validated once at the
public entry (`api`) and trusted below it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """How a step samples calibration data, selects channels and refits.

    data: calibration data (.npz path, dict of arrays, iterable of feed dicts, or a
    CalibrationDataReader). num_reconstruction_samples: positions sampled per layer, in
    total over the calibration batches. selection: "greedy", "magnitude" or a callable
    criterion (schemes.pruning.select).
    """

    data: object
    num_reconstruction_samples: int = 2000
    allow_custom_downsample_ops: bool = False
    selection: object = "magnitude"
    reconstruct: bool = True
    seed: int = 0
    use_cuda: bool = False
    reference: object = None  # ModelProto whose layer outputs are the refit targets (default: the input)
    data_aware: bool = True  # SVD schemes: whiten by the inputs' second moment
    svd_refit: bool = False  # weight SVD of Gemm/MatMul: sequential least-squares refit (schemes.svd.refit)
