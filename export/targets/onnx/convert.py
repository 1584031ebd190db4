"""ONNX export: opset 18 through torch.export, single file, simplified; fp16 and int8 variants.

``convert`` is this target's entry in the registry (``export.config``); call it through
``export.convert``. ``exporter="as-is"`` is the way most users export a model today (the
TorchScript exporter at opset 17, no simplification): the benchmarks' baseline rows use it.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mobilevit import DEFAULT_SIZE

from ...errors import ExportConfigError
from ...int8 import Int8Options
from ...quiet import quiet
from .quantize import INPUT_NAME, convert_onnx_precision, int8_layers

OPSET = 18
AS_IS_OPSET = 17
OUTPUT_NAME = "logits"
EXPORTERS = ("ours", "as-is")


@dataclass(frozen=True)
class OnnxOptions(Int8Options):
    """ONNX-only choices (keyword arguments of ``export.convert(model, "onnx", ...)``); ``float_kinds``: see
    ``export.int8.Int8Options``."""

    target = "onnx"
    dynamic_batch: bool = True
    dynamic_hw: bool = False  # symbolic height/width, multiples of 64
    exporter: str = "ours"  # ours: torch.export, opset 18, onnxsim | as-is: TorchScript exporter, opset 17
    labels: tuple[str, ...] | None = None  # class names, written to metadata_props["labels"] (JSON list)
    metadata: dict[str, str] = field(default_factory=dict)  # more metadata_props (preprocessing, provenance)

    def __post_init__(self):
        super().__post_init__()
        check_exporter(self.exporter)
        if self.dynamic_hw and self.exporter != "ours":
            raise ExportConfigError("dynamic height/width needs exporter='ours'")


def check_exporter(exporter: str) -> str:
    if exporter not in EXPORTERS:
        raise ExportConfigError(f"unknown ONNX exporter {exporter!r}; choose one of: {', '.join(EXPORTERS)}")
    return exporter


def export_fp32(model: torch.nn.Module, path: Path, *, size: int, exporter: str = "ours", dynamic_batch: bool = True,
                dynamic_hw: bool = False) -> Path:
    """The fp32 ONNX file every other precision (and onnx2tf) starts from, by ``exporter``."""
    if exporter == "as-is":
        return export_onnx_as_is(model, path, size=size)
    return export_onnx(model, path, size=size, dynamic_batch=dynamic_batch, dynamic_hw=dynamic_hw)


def convert(model: torch.nn.Module, precisions: tuple[str, ...], workdir: Path, *, sizes: tuple[int, ...],
            calibration: np.ndarray | None, options: OnnxOptions) -> dict[str, Path]:
    """One fp32 export, then every requested precision derived from it: ``{precision: .onnx}``."""
    workdir = Path(workdir)
    with tempfile.TemporaryDirectory(prefix="onnx-fp32-", dir=workdir) as scratch:
        fp32 = export_fp32(model, Path(scratch) / "fp32.onnx", size=sizes[0], exporter=options.exporter,
                           dynamic_batch=options.dynamic_batch, dynamic_hw=options.dynamic_hw)
        searched = None
        if "int8" in precisions and options.int8_budget is not None:
            from .search import search_int8

            layers, calibration, searched = search_int8(model, fp32, calibration, options.int8_budget,
                                                        Path(scratch) / "search", size=sizes[0],
                                                        labels=options.heldout_labels,
                                                        objective=options.int8_objective)
        else:
            layers = int8_layers(model, fp32, options.float_kinds) if "int8" in precisions else None
        made = {p: convert_onnx_precision(fp32, workdir / f"model_{p}.onnx", p, calibration=calibration,
                                          int8_nodes=layers)
                for p in precisions}
        if searched is not None:  # the pipeline puts it in the manifest (export.publish.INT8_SEARCH_SIDECAR)
            from ...publish import write_int8_search

            write_int8_search(made["int8"], searched)
    if options.labels or options.metadata:
        for path in made.values():
            write_metadata(path, options.labels, options.metadata)
    return made


def metadata_options(*, task: str, output_kind: str, names: list[str], card: dict, provenance: dict,
                     preprocessing: dict) -> dict:
    """Labels, preprocessing and provenance for ``metadata_props`` (onnxruntime's ``get_modelmeta``)."""
    return {"labels": tuple(names), "metadata": {**provenance, "preprocessing": json.dumps(preprocessing),
                                                  "input_layout": "NCHW float32"}}


def write_metadata(path: Path, labels: tuple[str, ...] | None, metadata: dict[str, str]) -> None:
    """Set the model's ``metadata_props`` (what onnxruntime's ``get_modelmeta().custom_metadata_map`` returns):
    ``labels`` as a JSON list, index = class id, and every ``metadata`` field as a string."""
    import json

    import onnx

    model = onnx.load(str(path))
    props = {**({"labels": json.dumps(list(labels))} if labels else {}), **{k: str(v) for k, v in metadata.items()}}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def export_onnx(model: torch.nn.Module, path: str | Path, *, size: int = DEFAULT_SIZE, dynamic_batch: bool = True,
                dynamic_hw: bool = False, simplify: bool = True) -> Path:
    """Write ``model`` ([B, 3, H, W] -> logits) as one fp32 ONNX file at ``path``.

    ``dynamic_hw`` makes height and width symbolic multiples of 64 (64 ... 512): that keeps every
    MobileViT grid even, so no resize branch is baked into the graph.
    """
    path = Path(path)
    model = model.eval()
    x = torch.zeros(1, 3, size, size)
    dims: dict[int, object] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=1024)
    if dynamic_hw:
        if size % 64:
            raise ValueError(f"dynamic height/width needs an example size that is a multiple of 64, got {size}")
        dims[2] = 64 * torch.export.Dim("h64", min=1, max=8)
        dims[3] = 64 * torch.export.Dim("w64", min=1, max=8)
    kwargs = dict(dynamo=True, external_data=False, opset_version=OPSET, input_names=[INPUT_NAME],
                  output_names=[OUTPUT_NAME], optimize=True)
    if dims:
        kwargs["dynamic_shapes"] = (dims,)
    with quiet(stdout=True), torch.no_grad():  # torch.onnx's progress lines and warnings
        torch.onnx.export(model, (x,), str(path), **kwargs)
    if simplify:
        simplify_onnx(path)
    return path


def export_onnx_as_is(model: torch.nn.Module, path: str | Path, *, size: int = DEFAULT_SIZE) -> Path:
    """``torch.onnx.export(dynamo=False, opset_version=17)`` with no simplification: a model as most export it."""
    with quiet(stdout=True), torch.no_grad():  # torch.onnx's progress lines and warnings
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
                          opset_version=AS_IS_OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    return Path(path)


def simplify_onnx(path: str | Path) -> Path:
    """Run onnxsim in place; a model it cannot prove equal is an error, not a silent keep."""
    import onnx
    import onnxsim

    model = onnx.load(str(path))
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError(f"onnxsim could not validate the simplified graph of {path}")
    onnx.save(simplified, str(path))
    return Path(path)
