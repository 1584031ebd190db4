"""The int8 layer search: budget parsing, the ranking and the bisection by hand, the objective, and exports with a
budget end to end (the planted-layer tests on each target: ``test_int8search_planted.py``)."""
from __future__ import annotations

import platform

import numpy as np
import pytest

from export.errors import ExportConfigError
from export.int8search import Budget, parse_budget, rank, search


@pytest.mark.parametrize("text,expected", [("cosine=0.999", Budget("cosine", 0.999)), ("top1=0.5", Budget("top1", 0.5)),
                                           (" cosine=1 ", Budget("cosine", 1.0)), ("top1=0", Budget("top1", 0.0))])
def test_budgets_parse(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["cosine", "cosine=", "cos=0.9", "cosine=0", "cosine=1.5", "top1=-1", "top1=x",
                                  "cosine=nan", ""])
def test_a_bad_budget_names_the_valid_forms(text):
    with pytest.raises(ExportConfigError, match=r"cosine=C .*top1=P"):
        parse_budget(text)


def test_budget_holds_by_hand():
    assert Budget("cosine", 0.999).holds({"cosine": 0.999}) and not Budget("cosine", 0.999).holds({"cosine": 0.9989})
    assert Budget("top1", 0.5).holds({"top1_drop": 0.5}) and not Budget("top1", 0.5).holds({"top1_drop": 0.51})


def test_rank_by_drift_and_by_drift_per_gain():
    drift = {"a": 0.01, "b": 0.02, "c": 0.02, "d": 0.001}
    assert rank(drift) == ["b", "c", "a", "d"]  # most drift first; the tie b/c by name
    # per gain: a 0.01/0.5 = 0.02, b 0.02/0.1 = 0.2, c 0.02/0.4 = 0.05, d 0.001/0.001 = 1
    assert rank(drift, {"a": 0.5, "b": 0.1, "c": 0.4, "d": 0.001}) == ["d", "b", "c", "a"]
    # a layer whose int8 buys nothing or costs time comes first, the costliest first, whatever its drift
    assert rank(drift, {"a": -0.3, "b": 0.1, "c": 0.0, "d": 0.001}) == ["a", "c", "d", "b"]


def test_search_keeps_the_always_float_layers_and_searches_the_rest():
    drift = {"l0": 4e-4, "l1": 3e-4, "l2": 2e-4}

    def evaluate(float_layers):
        return {"cosine": 1 - sum(v for k, v in drift.items() if k not in float_layers)}

    # l2 always float (it buys no time): left 7e-4 > 5e-4, so l0 goes too (left 3e-4)
    found = search(["l0", "l1", "l2"], evaluate, Budget("cosine", 1 - 5e-4), always_float=["l2"])
    assert found.float_layers == ["l2", "l0"] and found.evaluations[0]["float"] == 1


def test_search_finds_the_shortest_prefix_that_holds():
    # an additive model: cosine = 1 - sum of the drifts of the layers left int8
    drift = {"l0": 4e-4, "l1": 3e-4, "l2": 2e-4, "l3": 1e-4, "l4": 5e-5, "l5": 5e-5}
    ranked = rank(drift)
    calls = []

    def evaluate(float_layers):
        calls.append(list(float_layers))
        return {"cosine": 1 - sum(v for k, v in drift.items() if k not in float_layers)}

    # all int8: 1 - 1.1e-3 < 0.999; l0 float: 1 - 7e-4 >= 0.999 -> the shortest prefix is [l0]
    found = search(ranked, evaluate, Budget("cosine", 0.999))
    assert found.float_layers == ["l0"] and found.met
    assert found.figures["cosine"] == pytest.approx(1 - 7e-4)
    assert len(calls) <= 2 + int(np.ceil(np.log2(len(ranked))))  # both ends, then bisection
    # 1 - 3e-4 needs l0, l1, l2 and l3 float (left: 1e-4): prefix of 4
    found = search(ranked, evaluate, Budget("cosine", 1 - 1.5e-4))
    assert found.float_layers == ["l0", "l1", "l2", "l3"]
    # nothing meets 1.0 exactly but everything float: the whole ranking, marked met (cosine 1.0)
    assert search(ranked, evaluate, Budget("cosine", 1.0)).float_layers == ranked
    # a budget all-int8 already meets: nothing goes back to float
    assert search(ranked, evaluate, Budget("cosine", 0.99)).float_layers == []


def test_search_says_when_even_all_float_misses():
    found = search(["a", "b"], lambda f: {"cosine": 0.5}, Budget("cosine", 0.9))
    assert not found.met and found.float_layers == ["a", "b"]


def test_an_objective_not_given_is_speed_where_the_runtime_can_be_timed_and_macs_where_it_cannot():
    """``resolve_objective``: no objective = speed for a runner that times its runtime, macs for one that cannot
    (the Core ML reference executor off macOS); speed asked of the latter is refused, naming macs."""
    from export.int8search import resolve_objective
    from export.targets.coreml.reference import CoreMLReferenceRunner
    from export.targets.onnx.runner import OnnxRuntimeRunner

    assert resolve_objective(None, OnnxRuntimeRunner) == "speed"
    assert resolve_objective(None, CoreMLReferenceRunner) == "macs"
    assert resolve_objective("macs", OnnxRuntimeRunner) == "macs"
    with pytest.raises(ExportConfigError, match="give --int8-objective macs"):
        resolve_objective("speed", CoreMLReferenceRunner)
    with pytest.raises(ExportConfigError, match="choose one of speed, macs"):
        resolve_objective("fast", OnnxRuntimeRunner)


def test_a_tflite_export_with_a_budget_searches_validates_and_records_it(tmp_path):
    """`python -m export tflite --precision int8 --int8-budget cosine=0.999`: published and validated; the
    manifest's layers add up to the model's, and the published graph has exactly one int8 convolution or
    fully-connected op per int8 conv/linear layer the manifest names (counted in the flatbuffer: int8 input)."""
    import json

    from ai_edge_litert import schema_py_generated as schema

    from data.synthetic import synthetic_model
    from export import with_target_defaults
    from export.__main__ import main
    from mobilevit.layers import layers

    assert main(["tflite", "--precision", "int8", "--int8-budget", "cosine=0.999", "--variant", "xx_small",
                 "--out", str(tmp_path)]) == 0
    folder = tmp_path / "mobilevit_xx_small_tflite_int8"
    manifest = json.loads((folder / "manifest.json").read_text())
    searched = manifest["int8_search"]
    names = [layer.name for layer in layers(with_target_defaults(synthetic_model("xx_small"), "tflite"))]
    assert sorted(searched["float_layers"] + searched["int8_layers"]) == sorted(names)
    assert searched["heldout_figures"]["cosine"] >= 0.999 and manifest["validation"]["passed"]
    assert manifest["int8_recipe"]["source"].startswith("search (cosine=0.999")
    assert searched["runtime"] == "litert"
    buf = (folder / "mobilevit_xx_small_int8.tflite").read_bytes()
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    g = m.subgraphs[0]
    int8_weighted = [op for op in g.operators
                     if codes[max(m.operatorCodes[op.opcodeIndex].builtinCode,
                                  m.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)]
                     in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
                     and g.tensors[op.inputs[0]].type == schema.TensorType.INT8]
    assert len(int8_weighted) == len([n for n in searched["int8_layers"] if not n.endswith(".matmul")])
    assert not list(folder.glob("*.int8search.json"))


@pytest.mark.parametrize("args,message", [
    (["onnx", "--precision", "int8", "--int8-budget", "cosine"], "give cosine=C"),
    (["onnx", "--precision", "int8", "--int8-budget", "cosine=1.2"], "a cosine budget is in (0, 1]"),
    (["onnx", "--precision", "int8", "--int8-budget", "top1=0.5"], "a top-1 budget is measured on labelled photos"),
    (["onnx", "--precision", "fp32", "--int8-budget", "cosine=0.999"], "add --precision int8"),
    (["onnx", "--precision", "int8", "--int8-budget", "cosine=0.999", "--float-kinds", "stem"], "give one of the two"),
    (["onnx", "--precision", "int8", "--int8-objective", "macs"], "give --int8-budget too"),
    pytest.param(["coreml", "--precision", "w8a8", "--int8-budget", "cosine=0.999", "--int8-objective", "speed"],
                 "--int8-objective speed: coreml-reference computes the artifact's numbers but its speed is not the "
                 "target runtime's, so no layer can be timed on this machine: give --int8-objective macs",
                 marks=pytest.mark.skipif(platform.system() == "Darwin", reason="Core ML times its own runtime")),
])
def test_a_bad_int8_budget_exits_2_before_any_work(tmp_path, capsys, args, message):
    from export.__main__ import main

    out = tmp_path / "out"
    assert main([*args, "--variant", "xx_small", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_the_benchmark_refuses_more_held_out_digits_than_there_are(tmp_path, capsys):
    """`--images digits`: scikit-learn's 1,797 digits split 80/20 per class leave 359 validation images (by hand:
    the per-class counts 178, 182, ... times 0.2, rounded); asking to hold out all of them leaves none to
    calibrate: exit 2, nothing written."""
    from benchmarks.int8search import main

    assert main(["--images", "digits", "--num-images", "359", "--size", "64", "--out", str(tmp_path / "o")]) == 2
    assert "--images digits has 359 validation images: give --num-images below 359" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_onnx_export_with_a_budget_searches_validates_and_records_it(tmp_path, capsys):
    """`python -m export onnx --precision int8 --int8-budget cosine=0.999 --int8-objective macs`: published
    (validated on photos the search and the calibration never saw); the manifest's layers add up to the model's,
    and the artifact quantizes exactly the layers it says are int8 (counted in the published graph). The macs
    objective times nothing, so the test asks the same of every machine (with speed, a CPU on which
    onnxruntime's int8 is slower than fp32, as on an AMX Xeon, rightly keeps every layer float and exits 2)."""
    import json

    import onnx

    from data.synthetic import synthetic_model
    from export import with_target_defaults
    from export.__main__ import main
    from mobilevit.layers import layer_macs, layers

    assert main(["onnx", "--precision", "int8", "--int8-budget", "cosine=0.999", "--int8-objective", "macs",
                 "--variant", "xx_small", "--out", str(tmp_path)]) == 0
    folder = tmp_path / "mobilevit_xx_small_onnx_int8"
    manifest = json.loads((folder / "manifest.json").read_text())
    searched = manifest["int8_search"]
    model = with_target_defaults(synthetic_model("xx_small"), "onnx")
    names = [layer.name for layer in layers(model)]
    assert sorted(searched["float_layers"] + searched["int8_layers"]) == sorted(names)
    macs = layer_macs(model, 256)
    assert searched["int8_mac_share"] == pytest.approx(
        sum(macs[n] for n in searched["int8_layers"]) / sum(macs.values()), abs=1e-4)
    assert searched["heldout_figures"]["cosine"] >= 0.999 and manifest["validation"]["passed"]
    assert manifest["int8_recipe"]["source"].startswith("search (cosine=0.999")
    assert searched["objective"] == "macs" and "saving_ms" not in searched and searched["int8_layers"]
    # the graph: one conv/linear node with a dequantized int8 weight per int8 conv/linear layer (attention
    # matmul pairs have no weight; biases are dequantized too, as a Conv's third input)
    graph = onnx.load(str(folder / "mobilevit_xx_small_int8.onnx")).graph
    consts = {i.name for i in graph.initializer}
    weights_dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts}
    int8_weighted = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1
                     and n.input[1] in weights_dq]
    assert len(int8_weighted) == len([n for n in searched["int8_layers"] if not n.endswith(".matmul")])
    assert not list(folder.glob("*.int8search.json"))  # the record went into the manifest, not beside it


def _png(path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.mark.parametrize("layout,count,message", [
    ("flat", 70, "has no class folders with images (its images sit directly in it)"),
    # 50 files in synset folders: the first 48 by path are validation's and calibration's, 2 are left (by hand)
    ("synset", 50, "holds 2 labelled images beyond the first 48 (by path) that validation and calibration read"),
])
def test_a_top1_budget_without_enough_labelled_photos_exits_2(tmp_path, capsys, layout, count, message):
    from data.photos import photo_variants
    from export.__main__ import main
    from mobilevit.labels import imagenet_synsets_and_names

    synsets = [synset for synset, _ in imagenet_synsets_and_names()[:2]]
    for i, photo in enumerate(photo_variants(count, seed=5)):
        _png(tmp_path / "photos" / ("" if layout == "flat" else synsets[i % 2]) / f"p{i:03d}.png", photo)
    out = tmp_path / "out"
    assert main(["onnx", "--precision", "int8", "--int8-budget", "top1=0.5", "--variant", "xx_small",
                 "--images", str(tmp_path / "photos"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "class folders" in err
    assert not out.exists() or not list(out.iterdir())


def test_a_top1_budget_is_held_on_labelled_photos_the_export_did_not_read(tmp_path, capsys, fine_tuned, digits_64):
    """`--int8-budget top1=0 --int8-objective macs --images DIR` (macs: nothing timed, the same on every machine)
    on the fine-tuned digits checkpoint, DIR/<digit>/*.png: 64 files, so by
    hand the search holds out the last 16 by path (validation and calibration read the first 48). Its recorded
    top-1 drop is checked on those 16 files, read here, against PyTorch and onnxruntime on the published file."""
    import json

    import onnxruntime as ort
    import torch

    from export.__main__ import main
    from mobilevit.checkpoints import load_model
    from mobilevit.preprocess import preprocess

    _, summary = fine_tuned
    val = digits_64.val
    photos = tmp_path / "digits"
    for i in range(64):
        pixels = (val.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # [64, 64, 3]
        _png(photos / str(int(val.labels[i])) / f"d{i:03d}.png", pixels)
    out = tmp_path / "out"
    assert main(["onnx", "--precision", "int8", "--int8-budget", "top1=0", "--int8-objective", "macs",
                 "--weights", summary["checkpoint"], "--images", str(photos), "--size", "64", "--out", str(out)]) == 0
    folder = next(out.glob("*_onnx_int8*"))
    manifest = json.loads((folder / "manifest.json").read_text())
    searched = manifest["int8_search"]
    assert searched["budget"].startswith("top1=0, and worst cosine")
    assert searched["heldout_labelled"] and searched["heldout_images"] == 16
    assert manifest["validation"]["passed"]

    held = sorted(photos.rglob("*.png"))[48:]
    labels = np.array([int(f.parent.name) for f in held])
    model = load_model(summary["checkpoint"]).eval()
    from PIL import Image

    x = preprocess([np.asarray(Image.open(f).convert("RGB")) for f in held], model.cfg, 64).numpy()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy().argmax(1)
    session = ort.InferenceSession(str(next(folder.glob("*.onnx"))), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = np.array([session.run(None, {name: x[i:i + 1]})[0].argmax(1)[0] for i in range(len(x))])
    drop = 100 * ((ref == labels).mean() - (got == labels).mean())
    assert drop <= 0 and searched["heldout_figures"]["top1_drop"] == pytest.approx(drop)
