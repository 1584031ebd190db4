"""The house rules, checked on the source: one conversion path, no import cycles, one registry.

No conversion runs here (only the last test, which converts to TorchScript in about a second).
"""
import ast
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# What only ``export/`` may touch: the converters and quantizers, and the target modules that wrap them.
CONVERTER_MODULES = ("coremltools", "onnx2tf", "onnxruntime.quantization", "onnxruntime.transformers",
                     "torch.onnx", "onnxsim", "export.coreml", "export.onnx", "export.tflite")
CONVERTER_CALLS = {"export_onnx", "export_onnx_as_is", "convert_onnx_precision", "convert_coreml", "onnx_to_tflite",
                   "quantize_static", "quantize_dynamic", "simplify_onnx"}


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth of the file (function-level too)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y / from . import y
                base = f"{package}.{base}" if base else package
                out |= {f"{base}.{a.name}" for a in node.names}  # `from . import publish` imports a module
            out.add(base)
    return out


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_never_convert_on_their_own(path):
    imported = _imports(path, "benchmarks")
    bad = sorted(m for m in imported if any(m == c or m.startswith(c + ".") for c in CONVERTER_MODULES))
    assert not bad, f"{path.name} imports converters directly: {bad}; call export.convert instead"
    called = sorted(_calls(path) & CONVERTER_CALLS)
    assert not called, f"{path.name} calls converter internals: {called}; call export.convert instead"
    source = path.read_text()
    for text in ("torch.onnx.", "ct.convert(", "coremltools.convert("):  # reached without an import of its own
        assert text not in source, f"{path.name} uses {text}; call export.convert instead"


def _export_graph() -> dict[str, set[str]]:
    modules = {f"export.{p.stem}": p for p in (ROOT / "export").glob("*.py") if p.stem != "__init__"}
    return {name: {m for m in _imports(path, "export") if m in modules and m != name}
            for name, path in modules.items()}


def test_the_import_graph_of_export_has_no_cycle():
    graph = _export_graph()
    assert graph["export.pipeline"] >= {"export.convert", "export.validate", "export.publish", "export.request"}
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(node):] + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])


def test_the_cycle_check_can_fail():
    """The same walk on a graph with a planted cycle raises: the check above is not vacuous."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    state: dict[str, int] = {}

    def visit(node):
        if state.get(node) == 1:
            raise AssertionError(node)
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in graph[node]:
            visit(nxt)
        state[node] = 2

    with pytest.raises(AssertionError):
        visit("a")


def test_every_registered_part_imports_and_every_precision_has_a_tolerance():
    from export.config import TARGETS, TOLERANCES, load

    assert set(TARGETS) == {"coreml", "onnx", "tflite", "executorch"}
    from mobilevit.rewrites import get_rewrite
    for name, cfg in TARGETS.items():
        for ref in (cfg.converter, cfg.options, cfg.runner, cfg.inspector):
            assert callable(load(ref)), ref
        assert all((name, p) in TOLERANCES for p in cfg.precisions)
        assert cfg.default_precision in cfg.precisions
        for rewrite in cfg.rewrites:
            get_rewrite(rewrite)
    # the CLI, the benchmarks and the accuracy matrix read the same lists
    from benchmarks.accuracy import MATRIX

    assert MATRIX == {n: c.precisions for n, c in TARGETS.items()}
    assert MATRIX["coreml"] == ("fp16", "fp32", "int8", "palettize8", "w8a8")


def test_the_registry_refuses_duplicates_and_names_the_choices():
    from export.config import TARGETS, register, target_config
    from export.errors import ExportConfigError

    with pytest.raises(ValueError, match="already registered"):
        register(TARGETS["onnx"])
    with pytest.raises(ExportConfigError, match="choose one of: coreml, onnx, tflite, executorch"):
        target_config("tensorrt")


def test_convert_refuses_what_it_cannot_honour(tmp_path):
    from export import convert
    from export.errors import ExportConfigError
    from mobilevit import build

    model = build("xx_small")
    with pytest.raises(ExportConfigError, match="precision 'int4' is not available for onnx"):
        convert(model, "onnx", "int4", tmp_path)
    with pytest.raises(ExportConfigError, match="size 250 is not accepted"):
        convert(model, "onnx", "fp32", tmp_path, size=250)
    with pytest.raises(ExportConfigError, match="onnx has no option output_kind; its options are: dynamic_batch"):
        convert(model, "onnx", "fp32", tmp_path, output_kind="logits")  # a Core ML option, not ignored
    with pytest.raises(ExportConfigError, match="unknown ONNX exporter 'tf2onnx'"):
        convert(model, "onnx", "fp32", tmp_path, exporter="tf2onnx")
    assert list(tmp_path.iterdir()) == []


def test_one_default_size_and_one_preprocessing():
    """256, BGR, 1/255 and 288/256 are stated once (mobilevit.config); everything else reads them."""
    from mobilevit import DEFAULT_SIZE, get_config
    from mobilevit.config import Preprocessing

    pre = Preprocessing()
    assert DEFAULT_SIZE == 256 and pre.crop_size == 256 and get_config("small").input_size == 256
    assert pre.short_side(256) == 288 and pre.short_side(224) == 252 and pre.short_side(160) == 180
    assert pre.describe()["scale"] == "pixel / 255" and pre.describe()["channel_order"] == "BGR"
    for folder in ("export", "benchmarks"):
        for path in (ROOT / folder).glob("*.py"):
            text = path.read_text()
            assert "288 / 256" not in text and "1.0 / 255" not in text, path


# --------------------------------------------------- a fourth target is one module and one registry entry
def test_a_new_target_is_one_module_and_one_registry_entry(tmp_path, monkeypatch):
    """Register a TorchScript target (tests/toy_target.py, a real runtime) and nothing else: the one
    conversion path, the runner lookup, graph inspection, validation and the benchmark harness all take it."""
    from benchmarks.harness import build_entries, measure_drift
    from export import config, convert, make_runner
    from export.graph import inspect
    from export.validate import torch_reference, validate_artifact
    from mobilevit.preprocess import sample_batch
    from mobilevit.synthetic import synthetic_model

    monkeypatch.setitem(config.TOLERANCES, ("torchscript", "fp32"), config.Tolerance(1e-5, 0.99999, 1.0))
    entry = config.TargetConfig(
        "torchscript", ("fp32",), "fp32", "slice", "split", ".ts", converter="tests.toy_target:convert",
        options="tests.toy_target:Options", runner="tests.toy_target:runner",
        inspector="tests.toy_target:inspect")
    monkeypatch.setitem(config.TARGETS, "torchscript", entry)  # restored after the test
    del config.TARGETS["torchscript"]
    config.register(entry)  # the one registry entry
    model = synthetic_model("xx_small")
    x = sample_batch(model.cfg, 2, size=256, seed=4).numpy()
    path = convert(model, "torchscript", "fp32", tmp_path / "c")
    assert path.suffix == ".ts" and make_runner(path).runtime == "torchscript"
    assert inspect(path).format == "torchscript"
    report = validate_artifact(path, "torchscript", "fp32", torch_reference(model), {256: x})
    assert report.passed and report.by_size[256].max_abs_rel < 1e-5
    entries = build_entries(model, tmp_path / "b", ["torchscript"], {"torchscript": ("fp32",)}, x, baseline=False)
    measure_drift(entries, model, x)
    assert [e.name for e in entries] == ["torchscript fp32"] and entries[0].results["within_tolerance"] is True
    assert entries[0].patches == "slice" and entries[0].attention == "split"  # the target's defaults applied
    assert np.isfinite(entries[0].results["drift"]["cosine_min"])


def test_every_int8_recipe_names_a_registered_precision_and_real_kinds():
    """One recipe per target's quantized precision; kinds from mobilevit.layers; every target can override them."""
    from dataclasses import fields

    from export.config import INT8_RECIPES, TARGETS, load
    from mobilevit.layers import check_kinds

    assert set(INT8_RECIPES) == {("onnx", "int8"), ("tflite", "int8"), ("coreml", "w8a8"), ("executorch", "int8")}
    for (target, precision), recipe in INT8_RECIPES.items():
        assert precision in TARGETS[target].precisions and precision in TARGETS[target].calibrated
        assert check_kinds(recipe.float_kinds) == recipe.float_kinds
        assert "float_kinds" in {f.name for f in fields(load(TARGETS[target].options))}
    # the same float exceptions on every target (README "int8")
    assert len({r.float_kinds for r in INT8_RECIPES.values()}) == 1


def test_the_export_floor_never_reads_a_benchmark_results_file():
    """Data flows export -> benchmarks: no export module imports benchmarks or names their results folder."""
    for path in (ROOT / "export").glob("*.py"):
        imported = _imports(path, "export")
        assert not any(m == "benchmarks" or m.startswith("benchmarks.") for m in imported), path.name
        strings = {n.value for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)}  # paths built in code, not comments
        assert not [s for s in strings if s in ("benchmarks", "results") or "benchmarks/results" in s
                    or s.endswith(".json") and "results" in s], path.name


def test_the_int8_sensitivity_table_is_the_committed_measurement():
    """export.config.INT8_SENSITIVITY is a copy of `python -m benchmarks.quant`'s kind rows (mean cosine, 6
    decimals) for every recipe: re-measuring the table means updating the copy, which this test demands."""
    import json

    from export.config import INT8_RECIPES, INT8_SENSITIVITY, INT8_SENSITIVITY_MEASURED
    from mobilevit.layers import KINDS

    quant = json.loads((ROOT / "benchmarks" / "results" / "quant.json").read_text())
    assert set(INT8_SENSITIVITY) == set(INT8_RECIPES)
    assert quant["variant"] in INT8_SENSITIVITY_MEASURED and quant["machine"]["cpu"] in INT8_SENSITIVITY_MEASURED
    for (target, precision), table in INT8_SENSITIVITY.items():
        measured = quant["targets"][target]
        assert measured["precision"] == precision
        rows = {r["row"]: r["drift"]["cosine_mean"] for r in measured["rows"] if r["row"] in KINDS}
        assert list(table) == list(KINDS) and table == {k: round(v, 6) for k, v in rows.items()}, target
