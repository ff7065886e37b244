"""The scheme interface: what every compression scheme (built in or a user's own) gives
the API and the search, so that neither ever branches on a scheme's name.

A scheme decides on *units* (a layer for SVD, a channel group for pruning). For each unit
it resolves the candidate sizes of a grid of ratio keys once (`Scheme.units`: ranks or
kept channels, the multiplicity applied there through `cost.py`), with each candidate's
exact cost *footprint* (layer -> kept fraction of that layer's cost: one cost rule for every
scheme, `exact_cost`), and same-shaped *preview* weights that the eval-score dictionary
swaps into one ONNX Runtime session. `apply` compresses a model at given ratios and returns
the new model with its per-layer statistics and skip reasons. `variants` (optional) gives
the layers a candidate changes, alone, for the latency metric.

Manual mode is `apply(model, ratios)`; auto mode is `units -> dictionary(preview) -> solve
-> finalists -> apply`; a pipeline is a loop over steps (see `api` and `search.auto`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import numpy as np
import onnx

from ..layers import Analysis, Layer
from ..options import Settings
from ..errors import ParameterError
from ..stats import LayerStats, SkippedLayer

UNCHANGED = "ratio 1.0: left unchanged"  # the skip reason of a layer asked to keep its size


@dataclass(frozen=True)
class Candidate:
    """One option of one unit.

    key: its key in the score table (ratio i/N, or a TAR error level); 1.0 = uncompressed.
    size: the rank, or the kept channels, after multiplicity.
    cost: the unit's cost under the metric with this option (the solver's additive cost).
    ratio: the manual ratio that reproduces this candidate exactly through `apply`.
    footprint: layer name -> fraction of that layer's cost kept with this option alone.
    """

    key: float
    size: int
    cost: int
    ratio: Fraction
    footprint: Mapping[str, Fraction] = field(default_factory=dict, compare=False)


@dataclass
class Unit:
    """A decision unit: its candidates and how to preview each.

    preview(candidate) -> {initializer name: same-shaped weight}: the model with those
    weights swapped in computes what `apply` computes for this unit alone.
    base_cost: the cost of the uncompressed option (the candidates' `cost` unit).
    weights: the initializers `preview` replaces.
    layers: the layers whose cost the unit changes.
    size: the full size (rank at which a split is exact, or the group's channel count):
    a candidate of this size previews the uncompressed model.
    data: scheme-specific detail (channel pruning: candidate key -> {(layer, side): kept}).
    """

    name: str
    candidates: list[Candidate]
    preview: Callable[[Candidate], dict[str, np.ndarray]]
    base_cost: int
    weights: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    data: dict | None = None
    size: int = 0


@dataclass(frozen=True)
class StepResult:
    """What `Scheme.apply` returns (onnx-ir's PassResult, with the statistics)."""

    model: onnx.ModelProto
    layers: list[LayerStats]
    skipped: list[SkippedLayer]


@dataclass(frozen=True)
class Context:
    """What a step knows: the cost metric, the multiplicity (already resolved), the input
    dims of the cost model, the settings, and the calibration service (None without data)."""

    metric: str
    multiplicity: int
    dims: dict
    settings: Settings | None = None
    activations: "Activations | None" = None
    rank_select: str = "greedy"

    @property
    def data_aware(self) -> bool:
        return self.settings is not None and self.settings.data is not None and self.settings.data_aware


class Sampler(Protocol):
    """Activations of the original and the current model (runtime.activations.Sampler)."""

    original: onnx.ModelProto

    def prefetch(self, names) -> None: ...
    def original_tensor(self, name: str) -> list[np.ndarray]: ...
    def target_tensor(self, name: str) -> list[np.ndarray]: ...
    def current_tensor(self, model: onnx.ModelProto, name: str) -> list[np.ndarray]: ...


class Activations(Protocol):
    """The calibration service a scheme reaches (runtime.activations.Activations)."""

    settings: Settings

    def sampler(self, model: onnx.ModelProto, settings: Settings | None = None) -> Sampler: ...


class Scheme:
    """Base class of a compression scheme; subclass it and `schemes.register` an instance.

    Class attributes say what the API must provide and how the search treats the units:
    needs_data: calibration data is required (`data=` / `--data`).
    exact_costs: the units' candidate costs add up to the model's cost exactly (SVD);
    False: they are upper bounds and savings elsewhere show only in the built model
    (channel pruning: the search aims with footprints, measures, and corrects).
    pipeline_reference: in a pipeline after another step, refit toward the uncompressed
    model's outputs (`Settings.reference`).
    rank_selects: the candidate kinds it offers ("greedy": ratio keys; "tar": error levels).
    overlapping_units: units of different kinds may change one layer's cost (a mix of
    schemes): their footprints multiply, and the search aims on the exact cost.
    """

    name: str = ""
    needs_data: bool = False
    exact_costs: bool = True
    pipeline_reference: bool = False
    rank_selects: tuple[str, ...] = ("greedy",)
    overlapping_units: bool = False

    def check(self, layer: Layer) -> str | None:
        """Why the scheme cannot take `layer` (None when it can)."""
        raise NotImplementedError

    def reason(self, layer: Layer, analysis: Analysis | None = None, metric: str = "mac") -> str | None:
        """`check`, plus what only the layer's analysis shows (inspect's eligibility)."""
        return self.check(layer)

    def apply(self, model: onnx.ModelProto, ratios, ctx: Context,
              ignored: dict[str, str] | None = None) -> StepResult:
        """Compress `model`: `ratios` is {layer: ratio} (named: a ratio that cannot apply is
        an error) or one ratio for every layer the scheme takes (those it cannot, and the
        `ignored` ones, are skipped with reasons)."""
        raise NotImplementedError

    def units(self, model: onnx.ModelProto, analysis: Analysis, names: list[str], keys: list[float],
              ctx: Context) -> tuple[list[Unit], dict[str, str]]:
        """Auto mode's units for the layers `names` with candidates at `keys`, and the layers
        left out with their reasons."""
        raise NotImplementedError

    def variants(self, analysis: Analysis, unit: Unit, opset: int) -> list[tuple[str, object, dict]]:
        """For the latency metric: [(layer, its Variant, {candidate key: Variant})] for the
        layers a unit's candidates change, each timed alone (schemes.variants)."""
        raise NotImplementedError(f"{self.name} has no latency variants")

    def table_key(self, ctx: Context) -> str:
        """The saved score table's scheme field: tables made otherwise are refused."""
        key = self.name if ctx.rank_select == "greedy" else f"{self.name}/{ctx.rank_select}"
        if ctx.multiplicity > 1:
            key += f"/multiplicity-{ctx.multiplicity}"
        return key

    def families(self, units: list[Unit]) -> tuple:
        """Sets of unit names whose selection alone the search also tries as a finalist
        (a mix of schemes: each scheme's own units); none by default."""
        return ()

    def quick(self, settings: Settings | None) -> Settings | None:
        """Settings for the dry run before the dictionary (cheap, same validity)."""
        return settings

    def census(self, analysis: Analysis) -> dict | None:
        """Statistics' channel-group census (channel pruning), else None."""
        return None


def exact_cost(units: list[Unit], choices: Mapping[str, float], costs: Mapping[str, int]) -> int:
    """The model's cost when each unit takes its chosen candidate (one rule for every
    scheme): every layer's cost times the kept fractions of every unit that touches it."""
    factor: dict[str, Fraction] = {name: Fraction(1) for name in costs}
    for unit in units:
        key = choices.get(unit.name, 1.0)
        if key == 1.0:
            continue
        cand = next(c for c in unit.candidates if c.key == key)
        for name, kept in cand.footprint.items():
            if name in factor:
                factor[name] *= kept
    return int(sum(costs[n] * f for n, f in factor.items()))


def check_ignored(ratios, ignored: Mapping[str, str]) -> None:
    """A layer both given a ratio and ignored is an error."""
    if isinstance(ratios, dict):
        both = [name for name in ratios if name in ignored]
        if both:
            raise ParameterError(f"layer(s) {both} are both given a ratio and ignored; drop one of the two")


def _in_width(layer) -> int:
    """A layer's input channel count (what channel pruning of its group shrinks)."""
    return int(layer.weight.shape[1]) if layer.op == "Conv" else int(layer.matrix_shape()[0])


def apply_with_trainer(scheme: "Scheme", model: onnx.ModelProto, ratios, ctx: Context, trainer,
                       ignored=None, order: list[str] | None = None) -> StepResult:
    """`scheme.apply` one layer at a time, calling AIMET's layer-wise fine-tuning hook
    `trainer.train_model(model, layer_name, train_flag=True)` after each; it returns the
    fine-tuned ModelProto, or None (AIMET's trainers tune in place; an ONNX model cannot be,
    so it is taken as unchanged). `ratios`: layer name -> ratio (in that order), or one
    ratio for the layers of `order`, each applied as the plain run applies one ratio to all
    (a layer it cannot take is skipped with the reason). A layer whose input channels an
    earlier step already pruned (with its channel group) is not compressed again."""
    from ..layers import analyze

    ignored = dict(ignored or {})
    one = not isinstance(ratios, Mapping)
    names = list(order or []) if one else list(ratios)
    current, stats, skipped = model, [], []
    changed: dict[str, str] = {}
    others = "compressed in another step of the trainer's loop"
    found = None  # the layers of `current`, analysed once per model
    for name in names:
        if found is None:
            found = {l.name: l for l in analyze(current, ctx.dims).compressible}
        if name in changed:
            op = found[name].op if name in found else ""
            skipped.append(SkippedLayer(name, op, f"compressed with the group of '{changed[name]}'"))
            continue
        before = {n: _in_width(l) for n, l in found.items()}
        if one:
            rest = {n: others for n in found if n != name and n not in ignored}
            step = scheme.apply(current, ratios, ctx, {**ignored, **rest})
        else:
            step = scheme.apply(current, {name: ratios[name]}, ctx, ignored)
        stats += step.layers
        skipped += [k for k in step.skipped if k.reason != others]
        stepped = {l.name: l for l in analyze(step.model, ctx.dims).compressible}
        for other, width in before.items():
            if other != name and other in stepped and _in_width(stepped[other]) != width:
                changed.setdefault(other, name)
        updated = trainer.train_model(step.model, name, train_flag=True)
        if updated is None:
            updated = step.model
        if not isinstance(updated, onnx.ModelProto):
            raise ParameterError(f"trainer.train_model(model, '{name}', train_flag=True) must return an "
                                 f"onnx.ModelProto or None, got {type(updated).__name__}")
        current, found = updated, (stepped if updated is step.model else None)
    return StepResult(current, stats, skipped)
