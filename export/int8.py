"""What every target's int8 shares, written once: the options check, the recipe resolution, the layer matcher.

* :class:`Int8Options`: the base of every target's options dataclass. It checks ``float_kinds`` (the
  :mod:`mobilevit.layers` kinds an int8 artifact keeps in float) and refuses them for a precision that
  keeps nothing in float by kind, at request time (``export.request.resolve`` and ``export.convert``
  call :meth:`Int8Options.check_precisions` before any model is loaded or converted).
* :func:`float_kinds`: the kinds an artifact keeps in float: the ones given, or (``None``) its recipe's
  (``export.config.INT8_RECIPES``).
* :func:`match_layers`: the model's layers (``mobilevit.layers.layers``, execution order) matched to a
  target's weight-bearing graph ops (graph order). Each target only reads its graph into :class:`LayerOp`
  rows (its adapter); the walk, the checks and the one error type (:class:`LayerMatchError`) are here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Sequence

from torch import nn

from mobilevit.layers import Layer, UnknownKindError, check_kinds, layers

from .config import INT8_RECIPES, TARGETS, int8_recipe, target_config
from .errors import ConversionError, ExportConfigError


@dataclass(frozen=True)
class Int8Options:
    """Base of a target's options dataclass: ``float_kinds`` checked once for every target.

    A subclass names its registry entry in ``target`` and, in ``weight_only``, the precisions without an
    int8 recipe that still take ``float_kinds`` (weight-only int8: nothing is kept in float unless asked).
    A subclass with a ``__post_init__`` of its own calls ``super().__post_init__()``.
    """

    target: ClassVar[str] = ""
    weight_only: ClassVar[tuple[str, ...]] = ()
    # int8: mobilevit.layers kinds kept in float; None = the recipe in export.config.INT8_RECIPES
    float_kinds: tuple[str, ...] | None = None
    # int8: search the layers kept in float for this checkpoint under a fidelity budget (export.int8search:
    # "cosine=0.999" or "top1=0.5"); None = the recipe (or float_kinds)
    int8_budget: str | None = None
    # with int8_budget: what the search maximises, "speed" (measured here) or "macs" (export.int8search.OBJECTIVES);
    # None: speed where the target's runtime can be timed here, else macs
    int8_objective: str | None = None
    # a top-1 budget's labels: the class index of each of the search's held-out photos, which are the last
    # len(heldout_labels) of the calibration array (export.request.search_photos puts them there)
    heldout_labels: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.float_kinds is not None:
            try:
                object.__setattr__(self, "float_kinds", check_kinds(self.float_kinds))
            except UnknownKindError as e:
                raise ExportConfigError(str(e)) from e
        if self.int8_objective is not None and self.int8_budget is None:
            raise ExportConfigError(f"--int8-objective {self.int8_objective} steers the search of --int8-budget: "
                                    "give --int8-budget too (e.g. cosine=0.999), or drop --int8-objective")
        if self.int8_budget is not None:
            from .int8search import check_objective, parse_budget

            check_objective(self.int8_objective)

            parse_budget(self.int8_budget)  # a top-1 one without heldout_labels: refused by the search
            if not target_config(self.target).int8_search:
                have = ", ".join(t for t, c in TARGETS.items() if c.int8_search)
                raise ExportConfigError(f"--int8-budget: {self.target} has no int8 layer search yet ({have} have); "
                                        "drop it, or choose the float layer kinds with --float-kinds")
            if self.float_kinds is not None:
                raise ExportConfigError("--int8-budget searches the layers kept in float; --float-kinds fixes them: "
                                        "give one of the two")

    @classmethod
    def int8_precisions(cls) -> tuple[str, ...]:
        """The target's precisions that keep layer kinds in float: those with a recipe, and ``weight_only``."""
        return tuple(p for p in target_config(cls.target).precisions
                     if (cls.target, p) in INT8_RECIPES or p in cls.weight_only)

    def check_precisions(self, precisions: Sequence[str]) -> None:
        """Refuse ``float_kinds`` if any of ``precisions`` would ignore them (one that is not int8), and
        ``int8_budget`` if none of them takes it (it applies to the recipe precisions; the others ignore it)."""
        if self.float_kinds is not None:
            takes = self.int8_precisions()
            ignored = [p for p in precisions if p not in takes]
            if ignored:
                raise ExportConfigError(
                    f"float_kinds (--float-kinds) applies to {self.target} {', '.join(takes)}, not to "
                    f"{', '.join(ignored)}: drop --float-kinds, or ask for --precision {','.join(takes)} only and "
                    f"export {', '.join(ignored)} in a separate run")
        if self.int8_budget is not None and precisions:
            takes = tuple(p for p in self.int8_precisions() if (self.target, p) in INT8_RECIPES)
            if not set(precisions) & set(takes):
                raise ExportConfigError(f"--int8-budget applies to {self.target} {', '.join(takes)}, and none is "
                                        f"asked for: add --precision {','.join(takes)}, or drop --int8-budget")


def float_kinds(target: str, precision: str, given: Sequence[str] | None) -> tuple[str, ...]:
    """The layer kinds a ``target`` ``precision`` artifact keeps in float: ``given``, or for ``None`` its
    recipe's (``export.config.INT8_RECIPES``); a precision without a recipe keeps none."""
    if given is not None:
        return tuple(given)
    recipe = int8_recipe(target, precision)
    return recipe.float_kinds if recipe is not None else ()


# ------------------------------------------------------------------------------------------------
# Layers -> graph ops
# ------------------------------------------------------------------------------------------------
class LayerMatchError(ConversionError):
    """A target's weight-bearing graph ops do not line up with the model's layers."""


@dataclass(frozen=True)
class LayerOp:
    """One weight-bearing op of a target's graph, as a target's adapter reads it."""

    id: str  # what the target's quantizer names it by: ONNX node name, MIL op name, TFLite output tensor
    type: str  # the target's own op type (Conv, conv, CONV_2D, ...), for messages
    family: str  # conv | linear | matmul: the mobilevit.layers op family it computes (Layer.op)
    weight: object  # its weight in the target's terms (shape, (shape, groups), ...); None: two activations

    def __str__(self) -> str:
        return f"{self.type} {self.id!r} (weight {self.weight})"


def match_layers(target: str, model: nn.Module, ops: Iterable[LayerOp],
                 weights: Callable[[nn.Module], tuple]) -> list[tuple[Layer, list[str]]]:
    """``[(layer, [op ids])]``: each layer of ``model`` (execution order) with the graph ops that compute it.

    ``ops`` are the graph's weight-bearing ops in graph order; ``weights(module)`` gives the weights a
    module may have in the target's terms. A conv or linear layer takes the next op, which must be of its
    family and carry one of those weights; an attention's matmul layer takes the run of activation matmuls
    that follows its q/k/v projection (one per product, or two per head with split attention). Raises
    :class:`LayerMatchError` at the first mismatch, naming the target, the op and the layer.
    """
    modules = dict(model.named_modules())
    ops = list(ops)
    out: list[tuple[Layer, list[str]]] = []
    k = 0
    for layer in layers(model):
        if not layer.weighted:
            start = k
            while k < len(ops) and ops[k].family == "matmul" and ops[k].weight is None:
                k += 1
            if k == start:
                after = f"the graph's next weight-bearing op is {ops[k]}" if k < len(ops) else "the graph ends"
                raise LayerMatchError(f"{target}: {layer.name} ({layer.kind}) expects matmuls of two activations "
                                      f"after its q/k/v projection; {after}")
            out.append((layer, [op.id for op in ops[start:k]]))
            continue
        want = weights(modules[layer.name])
        if k >= len(ops):
            raise LayerMatchError(f"{target}: {layer.name} ({layer.kind}) expects {layer.op} weight {want[0]}; "
                                  f"the graph has no weight-bearing op left (it has {len(ops)})")
        if ops[k].family != layer.op or ops[k].weight not in want:
            raise LayerMatchError(f"{target}: {layer.name} ({layer.kind}) expects {layer.op} weight "
                                  f"{' or '.join(map(str, want))}; the graph's next weight-bearing op is {ops[k]}")
        out.append((layer, [ops[k].id]))
        k += 1
    if k != len(ops):
        raise LayerMatchError(f"{target}: {len(ops) - k} weight-bearing ops belong to no layer of the model "
                              f"(first: {ops[k]})")
    return out


def ops_of_kinds(matches: list[tuple[Layer, list[str]]], kinds: Iterable[str]) -> list[str]:
    """The op ids of the matched layers whose kind is in ``kinds``, in graph order."""
    kinds = set(kinds)
    return [i for layer, ids in matches if layer.kind in kinds for i in ids]


def ops_by_kind(matches: list[tuple[Layer, list[str]]]) -> dict[str, list[str]]:
    """``{kind: [op ids]}`` in order of first appearance."""
    out: dict[str, list[str]] = {}
    for layer, ids in matches:
        out.setdefault(layer.kind, []).extend(ids)
    return out
