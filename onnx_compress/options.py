"""Options shared by the schemes and the search: frozen dataclasses, validated once at the
public entry (`api`) and trusted below it."""
from __future__ import annotations

import dataclasses
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
    svd_refit: bool = False  # weight/spatial SVD: sequential least-squares refit (schemes.svd.refit)


# ------------------------------------------------------------------ the public options
@dataclass(frozen=True)
class Calibration:
    """How calibration data is used (with `data=`): channel pruning's sampling, selection
    and least-squares refit, and data-aware SVD.

    num_reconstruction_samples: positions sampled per layer. selection: "magnitude",
    "greedy" or a callable importance(weight, patches) (schemes.pruning.select).
    reconstruct: refit pruned layers by least squares. allow_custom_downsample_ops: insert
    channel Gathers where upstream producers cannot lose channels (manual mode).
    data_aware: SVD factors whitened by the inputs' second moment. svd_refit: weight and
    spatial SVD refit each split in graph order (schemes.svd.refit). reference_model (auto
    mode, channel pruning after another step): the uncompressed model to refit toward.
    """

    num_reconstruction_samples: int = 2000
    selection: object = "magnitude"
    reconstruct: bool = True
    seed: int = 0
    allow_custom_downsample_ops: bool = False
    data_aware: bool = True
    svd_refit: bool = False
    reference_model: object = None


@dataclass(frozen=True)
class Search:
    """How auto mode searches (see compress_auto): `candidates` ratios i/N per layer (or
    TAR levels with rank_select="tar"), the solver `method` ("knapsack" or "threshold"),
    `use_monotonic_fit`, `verify_finalists`, the layers (`config_list`, NNI style, and
    `modules_to_ignore`), saved scores (`saved_eval_scores_dict` to reuse, `scores_out` to
    write), `workers` threads, a `trainer` called after each layer, `progress(done, total)`.
    `executor="ray"` scores the dictionary on Ray actors (search.ray_scorer): `ray_address`
    (None: a local Ray instance; "auto" or "HOST:6379": a running cluster), `ray_workers`
    actors (None: as many as the cluster holds), `ray_cpus` per actor (its intra-op
    threads), `ray_gpus` per actor with use_cuda (default 1; a fraction shares a GPU).
    `cache_mb`: the local dictionary's prefix-cache memory in MiB (default a sixteenth of the
    available memory; beyond it, files, then recomputation: runtime.PrefixCache).
    `halving`: successive halving (search/halving.py): every candidate scored on a quarter
    of the evaluation batches, the full data only for what can change the selection (at
    most about half the exhaustive dictionary's batches; the chosen always full-scored)."""

    candidates: int = 10
    method: str = "knapsack"
    rank_select: str = "greedy"
    use_monotonic_fit: bool = False
    verify_finalists: bool = True
    config_list: object = None
    modules_to_ignore: object = None
    saved_eval_scores_dict: object = None
    scores_out: object = None
    workers: int = 1
    trainer: object = None
    progress: object = None
    executor: str = "local"
    ray_address: str | None = None
    ray_workers: int | None = None
    ray_cpus: int = 1
    ray_gpus: float | None = None
    cache_mb: float | None = None
    halving: bool = False


@dataclass(frozen=True)
class Latency:
    """Layer timing for the latency metric or the slower-split check (see compress_auto):
    `batch_size` (default: the model's, 1 when dynamic), `allow_slower_splits`, `repeats`."""

    batch_size: int | None = None
    allow_slower_splits: bool | None = None
    repeats: int = 21


#: The flat keyword names the API also accepts, by option group and field.
FLAT_NAMES = {
    Calibration: {f: f for f in Calibration.__dataclass_fields__},
    Search: {f: f for f in Search.__dataclass_fields__},
    Latency: {"latency_batch_size": "batch_size", "allow_slower_splits": "allow_slower_splits",
              "latency_repeats": "repeats"},
}


def gather(cls, given, flat: dict, function: str, group: str, allowed=None):
    """The `cls` options of a call: `given` (an instance or None) updated by the flat
    keywords of `flat` that belong to `cls` (removed from `flat`). A keyword given both
    ways is an error, as is `given` of another type."""
    if given is not None and not isinstance(given, cls):
        from .errors import ParameterError

        raise ParameterError(f"the '{group}' parameter of {function} must be onnx_compress.options."
                             f"{cls.__name__}, got {type(given).__name__}")
    names = FLAT_NAMES[cls]
    if allowed is not None:
        names = {k: v for k, v in names.items() if v in allowed}
    mine = {names[k]: flat.pop(k) for k in list(flat) if k in names}
    if given is not None and mine:
        from .errors import ParameterError

        raise ParameterError(f"{function}: {sorted(mine)} given both as keywords and in '{group}'; "
                             "use one of the two")
    base = given if given is not None else cls()
    return dataclasses.replace(base, **mine) if mine else base


def refuse_unknown(flat: dict, function: str) -> None:
    if flat:
        name = next(iter(flat))
        raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")


def as_flat(*groups) -> dict:
    """The groups' fields under their flat keyword names (the recorded parameters)."""
    out = {}
    for options in groups:
        back = {v: k for k, v in FLAT_NAMES[type(options)].items()}
        for field in dataclasses.fields(options):
            if field.name in back:
                out[back[field.name]] = getattr(options, field.name)
    return out
