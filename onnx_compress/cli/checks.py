"""Values of the command line checked and parsed: schemes, ratios, shapes, whole-number
flags, quantization settings. Each bad value is a ParameterError naming its flag, raised
before any file is read or written."""
from __future__ import annotations

from .. import api
from ..errors import ParameterError

SCHEME_NAMES = api.SCHEME_NAMES


def _parse_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]] | None:
    if not items:
        return None
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise ParameterError(f"--input-shape expects NAME=d0,d1,..., got {item!r}") from None
    return shapes


def _parse_ratios(text: str) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise ParameterError(f"--ratios expects NAME=R[,NAME=R...], got {item!r}")
        try:
            ratios[name] = float(value)
        except ValueError:
            raise ParameterError(f"--ratios: ratio for '{name}' is not a number: {value!r}") from None
    if not ratios:
        raise ParameterError("--ratios is empty")
    return ratios


def _parse_floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ParameterError(f"{flag} expects numbers like 0.5 or 0.7,0.7, got {text!r}") from None


def _check_scheme(name: str) -> None:
    if name not in SCHEME_NAMES:
        raise ParameterError(f"--scheme: unknown scheme {name!r}; expected one of {', '.join(SCHEME_NAMES)}")


def _schemes(text: str) -> list[str]:
    """--scheme S[,S...]: the schemes, each known; ParameterError for an empty list (",")."""
    schemes = [s.strip() for s in text.split(",") if s.strip()]
    if not schemes:
        raise ParameterError(f"--scheme names no scheme (got {text!r}); expected one of {', '.join(SCHEME_NAMES)} "
                             "or a comma-separated pipeline of them")
    for name in schemes:
        _check_scheme(name)
    return schemes


#: Whole-number flags and their smallest value (None: not given, the default applies).
_COUNT_FLAGS = (("eval_iterations", "--eval-iterations", 1), ("candidates", "--candidates", 2),
                ("samples", "--samples", 1), ("workers", "--workers", 1), ("latency_batch", "--latency-batch", 1),
                ("calibration_batches", "--calibration-batches", 1), ("seed", "--seed", 0), ("ray_cpus", "--ray-cpus", 1))


def _check_flags(args) -> None:
    """Range checks of the numeric flags, before any file is read, naming the flag."""
    for attr, flag, low in _COUNT_FLAGS:
        value = getattr(args, attr, None)
        if value is not None and value < low:
            raise ParameterError(f"{flag} must be an integer >= {low}, got {value}")
    for attr, flag in (("ray_cpus", "--ray-cpus"), ("ray_gpus", "--ray-gpus")):
        if getattr(args, attr, None) is not None and getattr(args, "ray", None) is None:
            raise ParameterError(f"{flag} applies with --ray only")
    if getattr(args, "ray", None) is not None and getattr(args, "target", None) is None:
        raise ParameterError("--ray applies to auto mode (--target): it scores the eval-score dictionary")
    gpus = getattr(args, "ray_gpus", None)
    if gpus is not None and not (gpus > 0 and getattr(args, "cuda", False)):  # nan fails too
        raise ParameterError(f"--ray-gpus must be a GPU share > 0 (e.g. 0.25) and needs --cuda, got {gpus}")
    target = getattr(args, "target", None)
    if target is not None and not 0 < target <= 1:  # nan fails too
        raise ParameterError(f"--target must be a cost ratio in (0, 1] (e.g. 0.5 = half the cost), got {target}")
    if getattr(args, "ratio", None) is not None:
        for value in _parse_floats(args.ratio, "--ratio"):
            if not 0 < value <= 1:
                raise ParameterError(f"--ratio must be in (0, 1] (a layer's cost after / before), got {value}")
