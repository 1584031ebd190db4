"""``python -m benchmarks.accuracy --weights CKPT --images DIR``: a user's checkpoint on labelled folders.

The checkpoint is a Hugging Face model folder written by ``transformers`` itself (``save_pretrained``);
the images are photos from the installed packages, filed under ImageNet synsets. Expected figures come
from transformers' own forward pass and the labels the test assigned, never from the module under test.
Only one fixture converts (ONNX fp32 + int8_dynamic); every other run is PyTorch alone.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.accuracy import AccuracyConfigError, csv_rows, main, run_folder, score
from benchmarks.stats import paired_delta_ci, proportion_ci
from data.folders import FolderError, LabelledFiles, UnreadableImageError, scan
from mobilevit.checkpoints import load_checkpoint, save_checkpoint
from mobilevit.labels import imagenet_synsets_and_names
from tests.checkpoint_helpers import _their_state_dict, huggingface_folder

N = 24
TABLE = imagenet_synsets_and_names()


# Sizes (h, w) whose short side scales to 288 with a whole-pixel long side and an even crop margin: there the
# public recipe leaves no rounding choice (torchvision and transformers truncate the scaled long side,
# mobilevit.preprocess rounds it; elsewhere the two differ by a pixel, which this module is not about).
SIZES = [(400, 600), (600, 400), (320, 320), (360, 480), (480, 360), (375, 500), (512, 512), (450, 600)]


@pytest.fixture(scope="session")
def user(tmp_path_factory, synthetic_xxs):
    """An HF checkpoint folder, 24 photos with labels (half the model's own top-1, half another class),
    the pixels transformers' own MobileViTImageProcessor made of them and transformers' logits for those."""
    from transformers import MobileViTImageProcessor

    from data.photos import photo_variants

    root = tmp_path_factory.mktemp("user")
    hf = huggingface_folder(root / "hf", synthetic_xxs, {i: n for i, (_, n) in enumerate(TABLE)})
    staged = []
    for i, photo in enumerate(photo_variants(N, seed=3)):  # JPEG first: the figures are of the files' pixels
        h, w = SIZES[i % len(SIZES)]
        staged.append(root / f"photo_{i:03d}.JPEG")
        Image.fromarray(photo).resize((w, h), Image.BILINEAR).save(staged[-1], quality=92)
    decoded = [np.asarray(Image.open(f).convert("RGB")) for f in staged]
    # the peer's own eval pipeline: short side to 288 (bilinear), center crop 256, /255, RGB -> BGR
    processor = MobileViTImageProcessor(size={"shortest_edge": 288}, crop_size={"height": 256, "width": 256},
                                        resample=Image.BILINEAR, do_rescale=True, do_flip_channel_order=True)
    pixels = processor(images=decoded, return_tensors="np")["pixel_values"]  # [24, 3, 256, 256] BGR / 255
    crops = processor(images=decoded, do_rescale=False, return_tensors="np")["pixel_values"]  # the same, uint8
    with torch.no_grad():
        logits = hf(pixel_values=torch.from_numpy(pixels)).logits.numpy()
    top1 = logits.argmax(1)
    labels = np.where(np.arange(N) % 2 == 0, top1, (top1 + 1) % 1000)
    files = []
    for f, label in zip(staged, labels):
        d = root / "synset" / TABLE[label][0]
        d.mkdir(parents=True, exist_ok=True)
        files.append(Path(shutil.move(f, d / f.name)))
    return {"root": root, "hf": root / "hf", "synset": root / "synset", "labels": labels, "logits": logits,
            "pixels": pixels, "crops": crops, "files": files}


def _pytorch_only(user, images, out, **kw):
    return run_folder(user["hf"], images, targets=[], out=out, batch=8, progress=False, **kw)


def _hand_figures(user, labels=None):
    """top-1 and top-5 from transformers' logits and the assigned labels."""
    labels = user["labels"] if labels is None else labels
    top5 = np.argsort(-user["logits"], axis=1)[:, :5]
    return float((top5[:, 0] == labels).mean()), float((top5 == labels[:, None]).any(1).mean())


@pytest.fixture(scope="session")
def converted(user, tmp_path_factory):
    out = tmp_path_factory.mktemp("acc-onnx")
    result = run_folder(user["hf"], user["synset"], targets=["onnx"], precisions=["fp32", "int8_dynamic"],
                        out=out, batch=8, progress=False)
    return result, out


# ----------------------------------------------------------------------------- figures
def test_pytorch_accuracy_equals_the_hand_count(user, tmp_path):
    result = _pytorch_only(user, user["synset"], tmp_path / "out")
    row = result["rows"][0]
    top1, top5 = _hand_figures(user)
    assert top1 == 0.5  # 12 labels are the peer's own top-1, 12 are not
    assert (row["target"], row["images"], row["top1"], row["top5"]) == ("pytorch", N, top1, top5)
    assert result["meta"]["layout"] == "synset" and result["meta"]["format"] == "huggingface"


def test_a_planted_mislabel_costs_exactly_one_image(user, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(user["synset"], images)
    victim = next(i for i in range(N) if user["labels"][i] == user["logits"][i].argmax())  # a right one
    wrong = (user["labels"][victim] + 7) % 1000
    (images / TABLE[wrong][0]).mkdir(exist_ok=True)
    shutil.move(images / user["files"][victim].relative_to(user["synset"]), images / TABLE[wrong][0])
    before = _pytorch_only(user, user["synset"], tmp_path / "a")["rows"][0]["top1"]
    after = _pytorch_only(user, images, tmp_path / "b")["rows"][0]["top1"]
    assert after == pytest.approx(before - 1 / N, abs=1e-12)


def test_three_layouts_give_the_same_figures(user, tmp_path):
    synset = _pytorch_only(user, user["synset"], tmp_path / "s")["rows"]
    names, flat = tmp_path / "names", tmp_path / "flat"
    flat.mkdir()
    lines = ["filename,class_index"]
    for i, (f, label) in enumerate(zip(user["files"], user["labels"])):
        short = TABLE[label][1].split(",")[0]
        unique = sum(n.split(",")[0].strip().lower() == short.lower() for _, n in TABLE) == 1
        d = names / (short if unique else TABLE[label][1])
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, d / f.name)
        shutil.copy(f, flat / f"img_{i:03d}.JPEG")
        lines.append(f"img_{i:03d}.JPEG,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "ilsvrc.txt").write_text("".join(f"{label}\n" for label in user["labels"]))  # sorted file order
    (tmp_path / "synsets.txt").write_text("".join(f"{TABLE[label][0]}\n" for label in user["labels"]))
    runs = {"class-name": _pytorch_only(user, names, tmp_path / "n"),
            "csv": _pytorch_only(user, flat, tmp_path / "c", labels=tmp_path / "labels.csv"),
            "ilsvrc": _pytorch_only(user, flat, tmp_path / "i", labels=tmp_path / "ilsvrc.txt"),
            "synset list": _pytorch_only(user, flat, tmp_path / "l", labels=tmp_path / "synsets.txt")}
    assert runs["class-name"]["meta"]["layout"] == "class-name"
    assert runs["csv"]["meta"]["layout"] == "flat+labels"
    key = ("images", "top1", "top5", "top1_ci95")
    for name, r in runs.items():
        assert {k: r["rows"][0][k] for k in key} == {k: synset[0][k] for k in key}, name


@pytest.mark.parametrize("fmt", ["mmpretrain", "cvnets", "timm"])
def test_every_public_format_scores_the_same(user, tmp_path, synthetic_xxs, fmt):
    """The same weights under mmpretrain's, ml-cvnets' and timm's real key names give the peer's figures."""
    sd = _their_state_dict(fmt, "xx_small", synthetic_xxs)
    torch.save({"state_dict": sd, "meta": {"epoch": 300}} if fmt == "mmpretrain" else sd, tmp_path / "model.pth")
    result = run_folder(tmp_path / "model.pth", user["synset"], targets=[], out=tmp_path / "o", batch=8,
                        progress=False)
    assert result["meta"]["format"] == fmt
    assert (result["rows"][0]["top1"], result["rows"][0]["top5"]) == _hand_figures(user)


def test_huggingface_class_names_come_from_config_json(user):
    ckpt = load_checkpoint(user["hf"])
    assert ckpt.class_names[0] == "tench, Tinca tinca" and len(ckpt.class_names) == 1000
    assert len(set(ckpt.class_names)) == 1000  # "crane" twice in ImageNet: made unique


# --------------------------------------------------------------------------- artifacts
def _onnxruntime_logits(path: Path, pixels: np.ndarray) -> np.ndarray:
    """onnxruntime's own session on the peer's pixels, one image at a time: ``[N, 1000]``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: pixels[i:i + 1]})[0] for i in range(len(pixels))])


def test_every_artifact_is_scored_and_written(user, converted):
    """What the files say, against figures counted here: PyTorch and ONNX fp32 get the 12 images labelled with
    transformers' top-1 right; ONNX int8 gets right what onnxruntime, run here on the peer's pixels, gets right."""
    result, out = converted
    (int8_file,) = (out / "predictions" / "artifacts").rglob("*int8_dynamic*.onnx")
    # the peer's crops scaled by hand as the model's recipe says (float32 x float32(1/255)): transformers' own
    # rescale lands 1 ulp away on half the pixels, and dynamic int8 turns that into logit shifts of up to 0.02
    # (0.5% of the range), enough to flip the near ties (measured on AMD EPYC Zen 3, AVX2)
    pixels = user["crops"].astype(np.float32) * np.float32(1 / 255)
    assert np.abs(pixels - user["pixels"]).max() <= 6e-8  # the same pixels as the peer's, to an ulp
    int8 = _onnxruntime_logits(int8_file, pixels)
    peer, int8_top1, labels = user["logits"].argmax(1), int8.argmax(1), user["labels"]
    int8_hits, int8_changed = int((int8_top1 == labels).sum()), int((int8_top1 != peer).sum())
    int8_top5 = float((np.argsort(-int8, axis=1)[:, :5] == labels[:, None]).any(1).mean())
    _, top5 = _hand_figures(user)
    # PyTorch is right on the even images (labelled with its top-1) and wrong on the odd ones
    lost, gained = int((int8_top1 != labels)[::2].sum()), int((int8_top1 == labels)[1::2].sum())
    # (images, top1, top5, changed, agreement with PyTorch, right -> wrong, wrong -> right)
    expected = {"pytorch_fp32": (24, 12 / 24, top5, 0, 1.0, 0, 0), "onnx_fp32": (24, 12 / 24, top5, 0, 1.0, 0, 0),
                "onnx_int8_dynamic": (24, int8_hits / 24, int8_top5, int8_changed, 1 - int8_changed / 24, lost,
                                      gained)}
    saved = json.loads((out / "accuracy.json").read_text())
    for rows in (result["rows"], saved["rows"]):  # what the call returned, and what it wrote
        assert [r["artifact"] for r in rows] == list(expected)
        assert all(r["error"] == "" for r in rows), rows
        for r in rows:
            got = (r["images"], r["top1"], r["top5"], r["changed"], r["agreement_top1"], r["right_to_wrong"],
                   r["wrong_to_right"])
            assert got == pytest.approx(expected[r["artifact"]], abs=1e-12), r["artifact"]
    assert saved["rows"][1]["runtime"].startswith("onnxruntime")
    assert {k: saved["meta"][k] for k in ("format", "layout", "variant", "num_classes", "images", "size")} == {
        "format": "huggingface", "layout": "synset", "variant": "xx_small", "num_classes": 1000, "images": 24,
        "size": 256}
    order = sorted(range(N), key=lambda i: (user["files"][i].parent.name, user["files"][i].name))  # folder, file
    for name, top1 in (("pytorch_fp32", peer), ("onnx_fp32", peer), ("onnx_int8_dynamic", int8_top1)):
        pred = np.load(out / "predictions" / f"{name}.npy")
        assert pred.shape == (N, 5)
        np.testing.assert_array_equal(pred[:, 0], top1[order], err_msg=name)  # the runtimes' top-1, file order
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    csv = (out / "accuracy.csv").read_text().splitlines()
    assert csv[0].startswith("target,precision,artifact") and len(csv) == 4
    assert [float(line.split(",")[5]) for line in csv[1:]] == pytest.approx([0.5, 0.5, int8_hits / 24], abs=1e-12)
    md = (out / "accuracy.md").read_text()
    assert "| onnx int8_dynamic |" in md and "synset layout" in md and "| pytorch fp32 | torch" in md
    assert "| 50.00% [" in md


def test_resume_after_an_interruption_gives_the_same_json(user, converted, tmp_path, monkeypatch):
    import export.runners

    real = export.runners.make_runner
    calls = {"n": 0}

    def interrupted(path, *a, **k):
        runner = real(path, *a, **k)
        if "int8_dynamic" in str(path):
            run = runner.run

            def ctrl_c_after_one_batch(feed):  # the artifact takes one image at a time: 8 images, then Ctrl-C
                calls["n"] += 1
                if calls["n"] > 8:
                    raise KeyboardInterrupt
                return run(feed)
            runner.run = ctrl_c_after_one_batch
        return runner

    monkeypatch.setattr(export.runners, "make_runner", interrupted)
    out = tmp_path / "out"
    kw = dict(targets=["onnx"], precisions=["fp32", "int8_dynamic"], out=out, batch=8, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_folder(user["hf"], user["synset"], **kw)
    assert json.loads((out / "predictions" / "onnx_int8_dynamic.json").read_text())["done"] == 8
    assert not (out / "accuracy.json").exists()
    monkeypatch.setattr(export.runners, "make_runner", real)
    resumed = run_folder(user["hf"], user["synset"], **kw)
    expected, _ = converted

    def stable(r):
        return {**r, "meta": {k: v for k, v in r["meta"].items() if k not in ("created", "started", "timing")}}
    assert stable(resumed) == stable(expected)


# --------------------------------------------------------------------------- bad input
def _refused(capsys, *args) -> str:
    assert main(list(args) + ["--no-progress", "--targets", "onnx"]) == 2
    return capsys.readouterr().err


def test_bad_input_is_refused_with_exit_2_and_nothing_written(user, tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    err = _refused(capsys, "--weights", str(user["hf"]), "--images", str(tmp_path / "empty"), "--out", str(out))
    assert "has no class folders with images" in err
    err = _refused(capsys, "--weights", str(user["hf"]), "--images", str(user["synset"]), "--out", str(out),
                   "--variant", "small")
    assert "xx_small" in err and "small" in err
    bad = tmp_path / "bad"
    shutil.copytree(user["synset"], bad)
    broken = bad / TABLE[user["labels"][0]][0] / "broken.JPEG"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    err = _refused(capsys, "--weights", str(user["hf"]), "--images", str(bad), "--out", str(out))
    assert "broken.JPEG" in err and "--skip-bad" in err
    assert not out.exists()  # refused before, or cleaned after: no half-written output
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, f in enumerate(user["files"]):
        shutil.copy(f, flat / f"img_{i:03d}.JPEG")
    (tmp_path / "range.csv").write_text("".join(f"img_{i:03d}.JPEG,{1000 if i == 3 else 1}\n" for i in range(N)))
    err = _refused(capsys, "--weights", str(user["hf"]), "--images", str(flat), "--labels",
                   str(tmp_path / "range.csv"), "--out", str(out))
    assert "line 4" in err and "class index 1000 is out of range" in err
    (tmp_path / "devkit.txt").write_text("".join(f"{1 + (i * 97) % 1000}\n" for i in range(N - 1)) + "1000\n")
    err = _refused(capsys, "--weights", str(user["hf"]), "--images", str(flat), "--labels",
                   str(tmp_path / "devkit.txt"), "--out", str(out))
    assert "ILSVRC2012_validation_ground_truth" in err
    assert not out.exists()


def test_a_decompression_bomb_is_refused_with_exit_2_naming_it(user, tmp_path, capsys, decompression_bomb):
    """A 138-byte PNG claiming 900 Mpixel in a class folder: exit 2 (not PIL's traceback), the file and the fix
    named, and the fresh run's --out removed."""
    bad = tmp_path / "bad"
    shutil.copytree(user["synset"], bad)
    huge = bad / TABLE[user["labels"][0]][0] / "huge.png"
    huge.write_bytes(decompression_bomb)
    out = tmp_path / "out"
    err = _refused(capsys, "--weights", str(user["hf"]), "--images", str(bad), "--out", str(out))
    assert f"image {huge} is too large to decode" in err and "900000000 pixels" in err
    assert "resize it to a few megapixels, or remove it from the folder" in err and "Traceback" not in err
    assert not out.exists()


def test_skip_bad_counts_and_lists_unreadable_images(user, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(user["synset"], bad)
    folder = bad / TABLE[user["labels"][0]][0]
    (folder / "broken.JPEG").write_bytes(b"not an image")
    good = Image.open(user["files"][0])
    good.save(folder / "cut.png")
    (folder / "cut.png").write_bytes((folder / "cut.png").read_bytes()[:2000])  # truncated
    with pytest.raises(UnreadableImageError, match="broken.JPEG"):
        _pytorch_only(user, bad, tmp_path / "x")
    result = _pytorch_only(user, bad, tmp_path / "y", skip_bad=True)
    assert sorted(result["meta"]["unreadable"]) == sorted(f"{folder.name}/{n}" for n in ("broken.JPEG", "cut.png"))
    assert result["meta"]["images"] == N + 2 and result["rows"][0]["images"] == N
    assert result["rows"][0]["top1"] == _hand_figures(user)[0]


def test_folders_that_do_not_match_the_head_are_refused(user, tmp_path, synthetic_xxs):
    from mobilevit import MobileViT, get_config

    ten = MobileViT(get_config("xx_small", num_classes=10)).eval()
    names = [f"digit {i}" for i in range(10)]
    save_checkpoint(ten, tmp_path / "ten.pt", class_names=names)
    with pytest.raises(FolderError, match=r"synset folders .* 1000-class head, but the checkpoint's head has 10 "
                                          r"classes \('digit 0'"):
        scan(user["synset"], 10, names)
    odd = tmp_path / "odd"
    for name in ("digit 1", "cat"):
        (odd / name).mkdir(parents=True)
        shutil.copy(user["files"][0], odd / name / "a.JPEG")
    with pytest.raises(FolderError, match=r"match no class .* 'cat'; the head's classes are 'digit 0'"):
        scan(odd, 10, names)
    many = tmp_path / "many"
    for i in range(3):
        (many / f"c{i}").mkdir(parents=True)
        shutil.copy(user["files"][0], many / f"c{i}" / "a.JPEG")
    with pytest.raises(FolderError, match="3 class folders but the checkpoint's head has 2 classes"):
        scan(many, 2, ["c0", "c1"])
    with pytest.raises(AccuracyConfigError, match="no requested target offers fp64"):
        run_folder(tmp_path / "ten.pt", odd, targets=["onnx"], precisions=["fp64"], out=tmp_path / "o")


# ------------------------------------------------------------------------------- pieces
def test_bootstrap_intervals_match_a_brute_force_bootstrap():
    rng = np.random.default_rng(0)
    n, gained, lost = 200, 10, 4
    diffs = np.array([1] * gained + [-1] * lost + [0] * (n - gained - lost))
    brute = [diffs[rng.integers(0, n, n)].mean() for _ in range(4000)]
    lo, hi = paired_delta_ci(gained, lost, n, resamples=4000)
    assert abs(lo - np.percentile(brute, 2.5)) <= 0.006 and abs(hi - np.percentile(brute, 97.5)) <= 0.006
    hits = np.array([1] * 150 + [0] * 50)
    brute = [hits[rng.integers(0, n, n)].mean() for _ in range(4000)]
    lo, hi = proportion_ci(150, n, resamples=4000)
    assert abs(lo - np.percentile(brute, 2.5)) <= 0.01 and abs(hi - np.percentile(brute, 97.5)) <= 0.01
    assert paired_delta_ci(0, 0, n) == (0.0, 0.0)


def test_score_counts_flips_and_lost_classes_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    ref = np.array([[0], [0], [1], [0], [2], [1]]).repeat(5, 1)
    pred = np.array([[0], [1], [1], [1], [0], [2]]).repeat(5, 1)  # image 1, 4 lost; 3, 5 gained
    pred[:, 1:] = -2
    r = score(pred, ref, labels, ["a", "b", "c"], names=[f"f{i}" for i in range(6)])
    assert (r["right_to_wrong"], r["wrong_to_right"], r["changed"]) == (2, 2, 4)
    assert r["top1"] == 4 / 6 and r["delta_top1"] == 0.0 and r["agreement_top1"] == 2 / 6
    assert r["classes_lost"] == [{"class": 0, "name": "a", "images": 2, "lost": 1}]  # c: one lost, one gained
    assert r["right_to_wrong_files"] == ["f1", "f4"]
    flat = csv_rows({"rows": [{**r, "target": "t", "precision": "p", "artifact": "t_p", "runtime": "", "error": ""}]})
    assert flat[0]["classes_lost"] == "a:-1"


def test_limit_takes_a_class_balanced_subset(tmp_path):
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    files = LabelledFiles(tmp_path, [tmp_path / f"{i}.jpg" for i in range(20)], labels, "synset", ["a", "b", "c"], 3)
    sub = files.balanced(8)
    assert sorted(np.bincount(sub.labels).tolist()) == [2, 3, 3]
    assert files.balanced(8).files == sub.files  # seeded
    assert files.balanced(None) is files


# ----------------------------------------------------------------------------------- Ray
# A real Ray cluster on loopback (`ray start --head`, as the README tells users), started once for this module's
# Ray tests; the runs connect to it by address. Expected predictions come from the one-process run (the local
# engine at 1 thread, the same batches), never from the Ray engine.
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    import os
    import secrets
    import subprocess
    import sys

    ray_bin = str(Path(sys.executable).parent / "ray")
    # loopback only, and Ray's token authentication with a token of this test's (the driver reads the same)
    settings = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # left set after the module: Ray keeps the first token it reads for the whole process, so a cluster this
    # process starts later (benchmarks.quant --ray) must hand its nodes the same token
    os.environ.update(settings)
    port = _free_port()
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True)


def _predictions(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted((out / "predictions").glob("*.npy"))}


def test_a_ray_run_gives_the_local_runs_predictions(user, tmp_path, ray_cluster, capsys):
    """ONNX and Core ML fp32 through `--ray ADDRESS`: the same predictions image by image, the same rows, as the
    one-process run at 1 thread; artifacts converted once (the local run reuses the Ray run's)."""
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    args = ["--weights", str(user["hf"]), "--images", str(user["synset"]), "--targets", "onnx,coreml",
            "--precisions", "fp32", "--batch", "4", "--threads", "1", "--no-progress"]
    assert main(args + ["--out", str(ray_out), "--ray", ray_cluster, "--workers", "2"]) == 0
    capsys.readouterr()
    (local_out / "predictions").mkdir(parents=True)
    shutil.copy(ray_out / "predictions" / "run.json", local_out / "predictions" / "run.json")  # its artifacts
    assert main(args + ["--out", str(local_out)]) == 0
    ray_result, local_result = (json.loads((o / "accuracy.json").read_text()) for o in (ray_out, local_out))
    assert ray_result["meta"]["engine"] == {"engine": "ray 2.60.0", "address": ray_cluster, "nodes": 1,
                                            "workers": 2, "threads_per_worker": 1}
    assert local_result["meta"]["engine"] == {"engine": "local", "threads": 1}
    ray_preds, local_preds = _predictions(ray_out), _predictions(local_out)
    assert list(ray_preds) == ["coreml_fp32", "onnx_fp32", "pytorch_fp32"]
    for name in ray_preds:
        np.testing.assert_array_equal(ray_preds[name], local_preds[name], err_msg=name)
    assert (ray_preds["pytorch_fp32"][:, 0] >= 0).all()
    assert ray_result["rows"] == local_result["rows"]
    assert [r["artifact"] for r in ray_result["rows"]] == ["pytorch_fp32", "onnx_fp32", "coreml_fp32"]
    assert not any(r["error"] for r in ray_result["rows"])
    # one pool of 2 actors for both artifacts (a pool per artifact would be 4 processes), and another for PyTorch
    timing = ray_result["meta"]["timing"]
    artifact_processes = set(timing["onnx_fp32"]["processes"]) | set(timing["coreml_fp32"]["processes"])
    assert len(artifact_processes) == 2, timing
    assert [timing[a]["files"] for a in ("pytorch_fp32", "onnx_fp32", "coreml_fp32")] == [24, 24, 24]


def test_a_worker_killed_mid_run_loses_no_image_and_repeats_none(user, tmp_path, ray_cluster):
    """96 files (the 24 photos, hard-linked 4 times): a Ray worker process is killed (SIGKILL) once a third of
    the predictions are saved; Ray restarts it and re-runs its batches, and every prediction equals the local
    run's (a batch arriving twice would stop the run)."""
    import threading

    import psutil

    tiled = tmp_path / "tiled"
    for f in user["files"]:
        (tiled / f.parent.name).mkdir(parents=True, exist_ok=True)
        for k in range(4):
            (tiled / f.parent.name / f"{f.stem}_{k}{f.suffix}").hardlink_to(f)
    kw = dict(targets=[], batch=4, threads=1, progress=False)
    local = run_folder(user["hf"], tiled, out=tmp_path / "local", **kw)
    saved = tmp_path / "ray" / "predictions" / "pytorch_fp32.json"
    killed = {}

    def kill_a_worker_mid_run():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            done = json.loads(saved.read_text())["done"] if saved.exists() else 0
            workers = [p for p in psutil.process_iter(["cmdline"]) if "MapWorker" in " ".join(p.info["cmdline"] or [])]
            if done >= 32 and workers:
                workers[0].kill()
                killed.update(done=done, pid=workers[0].pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_a_worker_mid_run, daemon=True)
    watcher.start()
    result = run_folder(user["hf"], tiled, out=tmp_path / "ray", ray=ray_cluster, workers=2, **kw)
    watcher.join(timeout=5)
    assert killed and 32 <= killed["done"] < 96, killed  # killed while predictions were still missing
    np.testing.assert_array_equal(np.load(tmp_path / "ray" / "predictions" / "pytorch_fp32.npy"),
                                  np.load(tmp_path / "local" / "predictions" / "pytorch_fp32.npy"))
    assert json.loads(saved.read_text())["done"] == 96
    assert result["rows"] == local["rows"] and result["rows"][0]["images"] == 96


def _tiny_onnx(path: Path, height: int | None) -> Path:
    """A 1000-class "classifier" of 3 weights per class on the image's channel means (any size), or, with
    ``height``, one that takes only 1 x 3 x height x height images (onnxruntime refuses the run's batches)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dims = [1, 3, height, height] if height else ["n", 3, "h", "w"]
    w = np.random.default_rng(7).standard_normal((3, 1000)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),  # [N, 3]
         helper.make_node("MatMul", ["mean", "w"], ["logits"])],  # [N, 1000]
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], 1000])],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_an_artifact_that_fails_mid_pass_is_its_rows_error_and_the_others_go_on(user, tmp_path, ray_cluster):
    """Two artifacts in the one pool: the first fails on every batch (it takes only 1x3x8x8), the second runs.
    The Ray run's rows, error text included, equal the local run's."""
    rows = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        assert run_folder(user["hf"], user["synset"], out=out, targets=[], batch=8, progress=False)["rows"]
        state = json.loads((out / "predictions" / "run.json").read_text())
        state["artifacts"] = {"onnx": {"fp32": str(_tiny_onnx(tmp_path / f"{engine}_8x8.onnx", 8)),
                                       "int8": str(_tiny_onnx(tmp_path / f"{engine}_any.onnx", None))}}
        (out / "predictions" / "run.json").write_text(json.dumps(state))
        kw = dict(ray=ray_cluster, workers=2) if engine == "ray" else dict(threads=1)
        rows[engine] = run_folder(user["hf"], user["synset"], out=out, targets=["onnx"], precisions=["fp32", "int8"],
                                  batch=8, progress=False, **kw)["rows"]
        assert not (out / "predictions" / "onnx_fp32.npy").exists() or json.loads(
            (out / "predictions" / "onnx_fp32.json").read_text())["done"] < 24  # never saved as complete
    assert [r["artifact"] for r in rows["ray"]] == ["pytorch_fp32", "onnx_fp32", "onnx_int8"]
    assert "Got invalid dimensions for input: image" in rows["ray"][1]["error"], rows
    assert not rows["ray"][2]["error"] and rows["ray"][2]["images"] == 24
    assert rows["ray"] == rows["local"]


def test_unreadable_images_on_ray_are_skipped_by_every_pass_as_in_the_local_run(user, tmp_path, ray_cluster):
    """With --skip-bad, PyTorch's pass on Ray workers finds the two unreadable files and the artifact's pass skips
    them: the rows, the unreadable list and every prediction equal the local run's, and a bad file is never a
    prediction."""
    bad = tmp_path / "bad"
    shutil.copytree(user["synset"], bad)
    folder = bad / TABLE[user["labels"][0]][0]
    (folder / "broken.JPEG").write_bytes(b"not an image")
    (folder / "cut.png").write_bytes(user["files"][0].read_bytes()[:2000])  # truncated
    results = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        assert run_folder(user["hf"], bad, out=out, targets=[], batch=8, skip_bad=True, progress=False)["rows"]
        state = json.loads((out / "predictions" / "run.json").read_text())  # the run's key; then as if new:
        state.pop("unreadable")  # nothing found yet, PyTorch's pass to run again (here on the engine under
        # test), the artifact "converted"
        state["artifacts"] = {"onnx": {"fp32": str(_tiny_onnx(tmp_path / f"{engine}.onnx", None))}}
        (out / "predictions" / "run.json").write_text(json.dumps(state))
        for f in (out / "predictions").glob("pytorch_fp32.*"):
            f.unlink()
        kw = dict(ray=ray_cluster, workers=2) if engine == "ray" else dict(threads=1)
        results[engine] = run_folder(user["hf"], bad, out=out, targets=["onnx"], precisions=["fp32"], batch=8,
                                     skip_bad=True, progress=False, **kw)
    ray, local = results["ray"], results["local"]
    assert sorted(ray["meta"]["unreadable"]) == sorted(f"{folder.name}/{n}" for n in ("broken.JPEG", "cut.png"))
    assert ray["meta"]["unreadable"] == local["meta"]["unreadable"]
    assert ray["rows"] == local["rows"] and [r["images"] for r in ray["rows"]] == [N, N]
    for name in ("pytorch_fp32", "onnx_fp32"):
        got, want = (np.load(tmp_path / e / "predictions" / f"{name}.npy") for e in ("ray", "local"))
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert (got[:, 0] == -1).sum() == 2, name  # the two unreadable files, in every pass


def test_a_worker_that_cannot_load_the_runtime_ends_the_run_with_exit_2(user, tmp_path, ray_cluster, capsys):
    """An artifact the worker's onnxruntime cannot load (not an ONNX model): exit 2 naming the artifact and the
    node, no accuracy table."""
    out = tmp_path / "out"
    assert run_folder(user["hf"], user["synset"], out=out, targets=[], batch=8, progress=False)["rows"]
    state = json.loads((out / "predictions" / "run.json").read_text())
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx model")
    state["artifacts"] = {"onnx": {"fp32": str(bad)}}  # the driver's "conversion" of an earlier run
    (out / "predictions" / "run.json").write_text(json.dumps(state))
    (out / "accuracy.json").unlink()
    assert main(["--weights", str(user["hf"]), "--images", str(user["synset"]), "--targets", "onnx", "--precisions",
                 "fp32", "--batch", "8", "--out", str(out), "--ray", "--no-progress"]) == 2  # a cluster of its own
    err = capsys.readouterr().err
    assert "cannot load model.onnx" in err and "onnx fp32" in err and "on node " in err
    assert not (out / "accuracy.json").exists()


def test_without_ray_the_accuracy_command_does_not_import_it(user, tmp_path):
    import subprocess
    import sys

    code = ("import sys; from benchmarks.accuracy import main; "
            "rc = main(sys.argv[1:]); print(rc, 'ray' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, "--weights", str(user["hf"]), "--images", str(user["synset"]),
                          "--targets", "none", "--batch", "8", "--out", str(tmp_path / "o"), "--no-progress"],
                         capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "0 False"
