"""The house rules, checked on the source: one conversion path, imports that run one way with no cycle,
a model package free of photo libraries, one registry.

No conversion runs here (only the last test, which converts to TorchScript in about a second).
"""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# What only ``export/`` may touch: the converters and quantizers, and the target modules that wrap them.
CONVERTER_MODULES = ("coremltools", "onnx2tf", "onnxruntime.quantization", "onnxruntime.transformers",
                     "torch.onnx", "onnxsim", "export.targets")
CONVERTER_CALLS = {"export_onnx", "export_onnx_as_is", "convert_onnx_precision", "convert_coreml", "onnx_to_tflite",
                   "quantize_static", "quantize_dynamic", "simplify_onnx"}


# The floors, lowest first: a module imports from its own floor and those below it, never above.
FLOORS = ("mobilevit", "data", "training", "export", "benchmarks")
# photo and plotting libraries: what data/ reads photos with, and what the model must never pull in
PHOTO_LIBRARIES = ("skimage", "sklearn", "matplotlib")


def _module(path: Path) -> str:
    """``export/convert.py`` -> ``export.convert``; ``export/__init__.py`` -> ``export``; sub-packages alike."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth of the file (function-level too),
    relative imports resolved. ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a module)."""
    module = _module(path)
    package = module.split(".") if path.stem == "__init__" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y (level 1: this package), from ..x import y (its parent)
                parts = package[:len(package) - node.level + 1] + ([node.module] if node.module else [])
                base = ".".join(parts)
            else:
                base = node.module
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def _sources() -> dict[str, Path]:
    """Module name -> file, for every module of every floor."""
    return {_module(p): p for floor in FLOORS for p in sorted((ROOT / floor).rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of our packages it imports (explicitly: importing ``a.b`` is an arrow to
    ``a.b``, not to the package ``a``, whose ``__init__`` Python runs first anyway)."""
    sources = _sources()
    return {name: {m for m in _imports(path) if m in sources and m != name} for name, path in sources.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first, every node as a start)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if state.get(node) == 1:
            return trail[trail.index(node):] + [node]
        if state.get(node) == 2:
            return None
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, trail + [node])
            if found:
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        found = visit(node, [])
        if found:
            return found
    return None


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Every ``a -> b`` where ``b`` lives on a higher floor than ``a``."""
    floor = {name: FLOORS.index(name.split(".")[0]) for name in graph}
    return [f"{a} -> {b}" for a in sorted(graph) for b in sorted(graph[a]) if floor[b] > floor[a]]


def reached_libraries(package: str) -> set[str]:
    """Top-level names of the outside libraries that ``package``'s modules import, directly or through
    the other modules of ours they import (function-level imports included)."""
    sources, graph = _sources(), import_graph()
    todo = [m for m in sources if m.split(".")[0] == package]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    return {i.split(".")[0] for m in seen for i in _imports(sources[m])} - set(FLOORS)


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
    imported = _imports(path)
    bad = sorted(m for m in imported if any(m == c or m.startswith(c + ".") for c in CONVERTER_MODULES))
    assert not bad, f"{path.name} imports converters directly: {bad}; call export.convert instead"
    called = sorted(_calls(path) & CONVERTER_CALLS)
    assert not called, f"{path.name} calls converter internals: {called}; call export.convert instead"
    source = path.read_text()
    for text in ("torch.onnx.", "ct.convert(", "coremltools.convert("):  # reached without an import of its own
        assert text not in source, f"{path.name} uses {text}; call export.convert instead"


def test_the_import_graph_is_read_with_relative_and_function_level_imports():
    graph = import_graph()
    assert set(graph) >= {"mobilevit", "mobilevit.model", "data.photos", "training.finetune", "training.__main__",
                          "export.pipeline", "benchmarks.accuracy"}
    assert graph["export.pipeline"] >= {"export.convert", "export.validate", "export.publish", "export.request"}
    assert graph["mobilevit"] >= {"mobilevit.config", "mobilevit.model"}  # from .config import ... in __init__
    assert graph["training.__main__"] == {"training.finetune"}
    assert graph["data.photos"] >= {"data.folders", "mobilevit.preprocess"}
    assert graph["export.request"] >= {"data.photos", "data.synthetic"}  # imported inside functions
    assert graph["benchmarks.accuracy"] >= {"training.finetune", "data.folders"}  # inside functions


def test_no_import_cycle_anywhere():
    """Between any two modules of mobilevit, data, training, export and benchmarks, function-level imports
    included: no module is imported by one it imports, directly or around a loop."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_run_one_way_down_the_floors():
    """mobilevit <- data <- training <- export <- benchmarks: nothing imports a floor above its own."""
    bad = upward_arrows(import_graph())
    assert not bad, f"imports against the floors {' <- '.join(FLOORS)}: {bad}"


def test_the_cycle_and_floor_checks_can_fail():
    """The same checks flag a planted cycle, the cycle the model and the photos once formed, and an upward
    arrow: the checks above are not vacuous."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is not a cycle
    graph = import_graph()
    graph["mobilevit.preprocess"] = graph["mobilevit.preprocess"] | {"data.photos"}  # the old sample_batch
    cycle = find_cycle(graph)  # data.photos -> data.datasets -> mobilevit.preprocess -> data.photos
    assert cycle[0] == cycle[-1] and {"data.photos", "mobilevit.preprocess"} <= set(cycle), cycle
    assert upward_arrows(graph) == ["mobilevit.preprocess -> data.photos"]


def test_the_model_package_reaches_no_photo_or_plot_library():
    """By the source, function-level imports and the modules of ours it imports included."""
    assert not reached_libraries("mobilevit") & set(PHOTO_LIBRARIES), reached_libraries("mobilevit")
    assert reached_libraries("data") >= set(PHOTO_LIBRARIES)  # the walk does see them where they are


def test_importing_every_model_module_loads_no_photo_or_plot_library():
    """At run time, in a fresh interpreter: what the libraries we import pull in counts too."""
    modules = sorted(m for m in _sources() if m.split(".")[0] == "mobilevit")
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(n for n in sys.modules if n.split('.')[0] in {PHOTO_LIBRARIES!r}))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"importing mobilevit loads {run.stdout.strip()}"


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
    for folder in FLOORS[1:]:
        for path in (ROOT / folder).glob("*.py"):
            text = path.read_text()
            assert "288 / 256" not in text and "1.0 / 255" not in text, path


# --------------------------------------------------- a fifth target is one package and one registry entry
def test_a_new_target_is_one_package_and_one_registry_entry(tmp_path, monkeypatch, capsys):
    """Register a TorchScript target (tests/toy_target/, a real runtime) and nothing else: the one conversion
    path, the runner lookup, graph inspection, validation, the CLI (its own --option, metadata, manifest,
    publishing) and the benchmark harness all take it."""
    import json

    import torch

    from benchmarks.harness import build_entries, measure_drift
    from data.photos import sample_batch
    from data.synthetic import synthetic_model
    from export import config, convert, make_runner
    from export.__main__ import main
    from export.graph import inspect
    from export.validate import torch_reference, validate_artifact
    from tests import toy_target

    for key, tol in toy_target.TOLERANCES.items():
        monkeypatch.setitem(config.TOLERANCES, key, tol)  # restored after the test
    monkeypatch.setitem(config.TARGETS, "torchscript", toy_target.ENTRY)
    del config.TARGETS["torchscript"]
    config.register(toy_target.ENTRY)  # the one registry entry
    model = synthetic_model("xx_small")
    x = sample_batch(model.cfg, 2, size=256, seed=4).numpy()
    path = convert(model, "torchscript", "fp32", tmp_path / "c")
    assert path.suffix == ".ts" and make_runner(path).runtime == "torchscript"
    assert inspect(path).format == "torchscript"
    report = validate_artifact(path, "torchscript", "fp32", torch_reference(model), {256: x})
    assert report.passed and report.by_size[256].max_abs_rel < 1e-5

    # the CLI: its choices, the target's own option, metadata from its hook, validation, manifest, publishing
    assert main(["torchscript", "--variant", "xx_small", "--out", str(tmp_path / "cli"), "--option", "freeze=1"]) == 0
    folder = tmp_path / "cli" / "mobilevit_xx_small_torchscript_fp32"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["target"] == "torchscript" and manifest["validation"]["passed"] is True
    assert manifest["options"] == {"freeze": True}
    extra = {"labels.txt": "", "metadata.txt": ""}
    module = torch.jit.load(str(folder / "mobilevit_xx_small_fp32.ts"), _extra_files=extra)
    assert list(module.parameters()) == []  # frozen: the weights are constants now
    assert len(extra["labels.txt"].decode().splitlines()) == 1000 and b"'weights_origin'" in extra["metadata.txt"]
    assert main(["torchscript", "--variant", "xx_small", "--out", str(tmp_path / "bad"), "--option", "fuse=1"]) == 2
    assert "torchscript takes KEY=VALUE with KEY one of: freeze, labels, metadata" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() or list((tmp_path / "bad").iterdir()) == []

    entries = build_entries(model, tmp_path / "b", ["torchscript"], {"torchscript": ("fp32",)}, x, baseline=True)
    measure_drift(entries, model, x)
    assert [e.name for e in entries] == ["torchscript fp32"] and entries[0].results["within_tolerance"] is True
    assert entries[0].patches == "slice" and entries[0].attention == "split"  # the target's defaults applied
    assert np.isfinite(entries[0].results["drift"]["cosine_min"])


# ------------------------------------------------------------------ nothing outside a target names a target
TARGET_NAMES = ("coreml", "onnx", "tflite", "executorch")


def _named_targets(source: str) -> list[tuple[int, str]]:
    """(line, name) of every target name used as a comparison operand or a key (dict key or subscript),
    alone or inside a tuple/list/set there."""
    def names(node):
        nodes = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return [n for n in nodes if isinstance(n, ast.Constant) and n.value in TARGET_NAMES]

    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                hits += names(operand)
        elif isinstance(node, ast.Dict):
            hits += [n for k in node.keys if k is not None for n in names(k)]
        elif isinstance(node, ast.Subscript):
            hits += names(node.slice)
    return sorted((h.lineno, h.value) for h in hits)


def _outside_the_targets() -> list[Path]:
    """Every module of every package but the target packages and the registry (export/config.py)."""
    packages = [d for d in ROOT.iterdir() if (d / "__init__.py").exists() and d.name != "tests"]
    return sorted(p for d in packages for p in d.rglob("*.py")
                  if "targets" not in p.relative_to(ROOT).parts and p != ROOT / "export" / "config.py")


def test_nothing_outside_the_targets_and_the_registry_names_a_target():
    assert {p.parent.name for p in _outside_the_targets()} >= {"mobilevit", "export", "benchmarks"}
    found = {str(p.relative_to(ROOT)): _named_targets(p.read_text()) for p in _outside_the_targets()}
    assert {k: v for k, v in found.items() if v} == {}, "ask the target's registry entry instead"


def test_the_target_name_check_can_fail():
    planted = ('if req.target == "coreml": pass\nx = {"onnx": 1}\ny = TOLERANCES[("tflite", "fp32")]\n'
               'z = t in ("executorch", "pytorch")\nsay("coreml is fine in a message")\n')
    assert _named_targets(planted) == [(1, "coreml"), (2, "onnx"), (3, "tflite"), (4, "executorch")]


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
    for path in (ROOT / "export").rglob("*.py"):
        imported = _imports(path)
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
