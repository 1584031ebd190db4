"""benchmarks.profile: per-op-type time from each runtime's own profiler, on tiny models whose ops are known
by construction (counts and kinds worked out by hand from the graphs built here)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import profile
from benchmarks.harness import BenchmarkInputError


def _onnx(path):
    """image [1, 3, 32, 32] -> ReduceMean over H, W -> MatMul [3, 64] -> Softmax -> MatMul [64, 10] -> Sigmoid:
    2 GEMM-like kernels, 3 others."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((3, 64), (64, 10)))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),  # [1, 3]
         helper.make_node("MatMul", ["m", "w1"], ["h"]), helper.make_node("Softmax", ["h"], ["p"], axis=-1),
         helper.make_node("MatMul", ["p", "w2"], ["z"]), helper.make_node("Sigmoid", ["z"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_gemm_like_names_of_both_runtimes():
    gemm = ["Conv", "QLinearConv", "FusedMatMul", "QLinearMatMul", "QGemm", "MatMulInteger",
            "Convolution (NHWC, QC8) IGEMM", "Convolution (NHWC, F32) DWConv", "Fully Connected (NC, QS8, QC8W) GEMM",
            "Batch Matrix Multiply (NC, F32) GEMM"]
    rest = ["Convert (NC)", "Softmax", "QuickGelu", "DequantizeLinear", "Transpose (ND, X8)", "Sigmoid (NC)",
            "LayerNormalization", "Multiply (ND)"]
    assert all(profile.gemm_like(op) for op in gemm)
    assert not any(profile.gemm_like(op) for op in rest)


def test_onnxruntime_profile_counts_each_kernel_once_per_run(tmp_path):
    from export.targets.onnx.profile import profile as ort_profile

    result = ort_profile(_onnx(tmp_path / "tiny.onnx"), np.ones((1, 3, 32, 32), np.float32), threads=1, runs=5)
    # nothing here for onnxruntime to fuse: each node is one kernel call per run
    assert {k: v["calls"] for k, v in result["ops"].items()} == {"ReduceMean": 1, "MatMul": 2, "Softmax": 1,
                                                                "Sigmoid": 1}
    assert all(v["ms"] > 0 for v in result["ops"].values())
    assert result["total_ms"] >= sum(v["ms"] for v in result["ops"].values())  # the run contains its kernels


def test_the_command_writes_shares_that_add_up(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    _onnx(art / "tiny.onnx")
    # the manifest an export writes beside its artifact: the variant and the input size come from it
    (art / "manifest.json").write_text(json.dumps({"precision": "fp32", "variant": "xx_small", "num_classes": 10,
                                                   "input": {"shape": [1, 3, 32, 32]}}))
    assert profile.main([str(art / "tiny.onnx"), "--runs", "3", "--out", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert saved["meta"]["threads"] == 1 and "int8_extensions" in saved["meta"]["cpu"]
    (row,) = saved["artifacts"]
    ops = row["ops"]
    assert [op for op, v in ops.items() if v["gemm_like"]] == ["MatMul"]
    assert row["gemm_ms"] == pytest.approx(ops["MatMul"]["ms"], abs=1e-3)
    assert row["ops_ms"] == pytest.approx(sum(v["ms"] for v in ops.values()), abs=1e-3)
    assert row["gemm_share"] == pytest.approx(row["gemm_ms"] / row["ops_ms"], abs=1e-3)
    md = (tmp_path / "out" / "profile.md").read_text()
    assert "| tiny.onnx | onnxruntime" in md and "| MatMul | yes | " in md and "| Softmax |  | " in md


@pytest.mark.parametrize("case", ["missing", "unknown", "no_manifest"])
def test_bad_artifacts_exit_2_naming_the_problem(tmp_path, capsys, case):
    path = {"missing": tmp_path / "gone.onnx", "unknown": tmp_path / "model.bin",
            "no_manifest": _onnx(tmp_path / "tiny.onnx")}[case]
    if case == "unknown":
        path.write_bytes(b"x")
    assert profile.main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert {"missing": "does not exist", "unknown": "unknown suffix '.bin'",
            "no_manifest": "no manifest.json"}[case] in err
    assert not (tmp_path / "out").exists()


def test_executorch_profile_names_xnnpack_operators(tmp_path):
    """A Linear -> Softmax module lowered to XNNPACK: ETDump reports one fully connected GEMM and one softmax per
    run, and the command's GEMM-like share is the GEMM's."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from export.targets.executorch.profile import profile as et_profile

    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Softmax(dim=-1)).eval()
    x = torch.ones(1, 256)
    program = to_edge_transform_and_lower(torch.export.export(model, (x,)),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    path = tmp_path / "tiny.pte"
    path.write_bytes(program.buffer)
    result = et_profile(path, x.numpy(), threads=1, runs=4)
    calls = {k: v["calls"] for k, v in result["ops"].items()}
    assert calls == {"Fully Connected (NC, F32) GEMM": 1, "Softmax (NC, F32)": 1}, result["ops"]
    assert result["total_ms"] >= sum(v["ms"] for v in result["ops"].values())


def test_executor_modes_are_kernel_and_sum_pairs_and_a_folder_without_a_manifest_is_exit_2(tmp_path, capsys):
    from benchmarks import executor

    assert executor.parse_modes("numpy:fp64, torch:fp32") == [("numpy", "fp64"), ("torch", "fp32")]
    for bad in ("numpy:fp64", "numpy:fp64,torch", "numpy:fp64,:fp32"):
        with pytest.raises(BenchmarkInputError, match="--modes"):
            executor.parse_modes(bad)
    (tmp_path / "m.mlpackage").mkdir()
    assert executor.main([str(tmp_path / "m.mlpackage"), "--out", str(tmp_path / "out")]) == 2
    assert "no manifest.json beside it" in capsys.readouterr().err
    assert executor.main([str(tmp_path / "m.mlpackage"), "--images", "0"]) == 2
    assert "--images 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
