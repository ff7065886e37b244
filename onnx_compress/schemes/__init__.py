"""The scheme registry: every compression scheme, built in or registered by a user.

    from onnx_compress import schemes
    schemes.register(MyScheme())        # a schemes.base.Scheme subclass instance
    onnx_compress.compress(model, "my_scheme", 0.5)

`SCHEMES` maps a scheme's name to its `Scheme`; the API and the search use only this.
"""
from __future__ import annotations

from enum import Enum

from ..errors import ParameterError
from .base import Candidate, Context, Scheme, StepResult, Unit, exact_cost
from .mix import Mix
from .pruning import CHANNEL_PRUNING
from .svd import SPATIAL_SVD, WEIGHT_SVD

__all__ = ["SCHEMES", "Candidate", "Context", "Mix", "Scheme", "StepResult", "Unit", "exact_cost", "get", "mix_of",
           "register", "unregister"]

SCHEMES: dict[str, Scheme] = {s.name: s for s in (WEIGHT_SVD, SPATIAL_SVD, CHANNEL_PRUNING)}


def register(scheme: Scheme, replace: bool = False) -> Scheme:
    """Add `scheme` to the registry under `scheme.name`; returns it (usable as a decorator
    on an instance-returning factory). A name already taken needs `replace=True`."""
    if not isinstance(scheme, Scheme):
        raise ParameterError(f"a scheme must be an instance of onnx_compress.schemes.Scheme, "
                             f"got {type(scheme).__name__}")
    name = getattr(scheme, "name", "")
    if not isinstance(name, str) or not name.isidentifier():
        raise ParameterError(f"a scheme's name must be an identifier string, got {name!r}")
    if name in SCHEMES and not replace and SCHEMES[name] is not scheme:
        raise ParameterError(f"scheme {name!r} is already registered (pass replace=True to replace it)")
    SCHEMES[name] = scheme
    return scheme


def unregister(name: str) -> None:
    """Remove a user's scheme (the built-in ones stay)."""
    if name in ("weight_svd", "spatial_svd", "channel_pruning"):
        raise ParameterError(f"scheme {name!r} is built in and cannot be removed")
    SCHEMES.pop(name, None)


def mix_of(schemes) -> Scheme:
    """One scheme for auto mode: a name (or Scheme), or a list of them under one target (a Mix)."""
    if isinstance(schemes, (list, tuple)):
        if not schemes:
            raise ParameterError("scheme list is empty")
        found = [get(s) for s in schemes]
        return found[0] if len(found) == 1 else Mix(found)
    return get(schemes)


def get(scheme) -> Scheme:
    """The registered scheme named `scheme` (a name, an Enum member named after it, or a Scheme)."""
    if isinstance(scheme, Scheme):
        return scheme
    name = str(scheme.name if isinstance(scheme, Enum) else scheme).lower()
    if name not in SCHEMES:
        raise ParameterError(f"unknown scheme {scheme!r}; expected one of {list(SCHEMES)}")
    return SCHEMES[name]
