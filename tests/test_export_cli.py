"""The CLI: bad requests get a clear error, exit 2, and write nothing; failures leave nothing."""
import os

import pytest
import torch

from export.__main__ import EXIT_BAD_REQUEST, EXIT_CONVERSION, EXIT_VALIDATION, main


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["onnx", "--variant", "medium"], "unknown MobileViT variant 'medium'"),
    (["onnx", "--precision", "int4"], "precision 'int4' is not available for onnx"),
    (["onnx", "--size", "250"], "size 250 is not accepted"),
    (["onnx", "--size", "abc"], "--size must be integers"),
    (["coreml", "--size", "160,256"], "odd patch grid"),
    (["tflite", "--dynamic-hw"], "--dynamic-hw applies to onnx only, not tflite"),
    (["onnx", "--precision", "int8", "--float-kinds", "conv3x3"], "--float-kinds: unknown layer kind(s) conv3x3"),
    (["onnx", "--precision", "int8", "--float-kinds", "stem,,mlp"], "unknown layer kind(s) mlp; choose from: stem"),
    (["onnx", "--precision", "fp32", "--float-kinds", "stem"], "float_kinds (--float-kinds) applies to onnx int8, "
                                                                "not to fp32: drop --float-kinds"),
    (["onnx", "--task", "segmentation", "--precision", "int8"], "segmentation is exported to onnx in fp32, fp16, "
                                                                 "not 'int8'"),
    (["executorch", "--task", "segmentation", "--precision", "coreml-fp16"], "in fp32, not 'coreml-fp16'"),
    (["coreml", "--task", "segmentation", "--size", "256,512"], "segmentation is exported at one fixed size"),
    (["coreml", "--task", "segmentation", "--output", "classifier"], "pass --output logits or --output classmap"),
    (["coreml", "--output", "classmap"], "--output classmap is for --task segmentation"),
    (["onnx", "--task", "segmentation", "--size", "500"], "size 500 is not accepted"),
])
def test_bad_requests_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code, err = _run(args + ["--out", str(out)], capsys)
    assert code == EXIT_BAD_REQUEST
    assert message in err
    assert not out.exists() or not any(out.iterdir())


def test_float_kinds_for_fp32_exit_2_before_any_model_is_loaded(tmp_path, capsys, monkeypatch):
    from export import pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("a model was loaded for a request that had to be refused")

    monkeypatch.setattr(pipeline, "load_model", no_work)
    out = tmp_path / "out"
    code, err = _run(["onnx", "--precision", "fp32", "--float-kinds", "stem", "--out", str(out)], capsys)
    assert code == EXIT_BAD_REQUEST and "not to fp32" in err and not out.exists()


def test_unknown_strategy_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["onnx", "--patches", "magic"])
    assert e.value.code == 2
    assert "invalid choice: 'magic'" in capsys.readouterr().err


def test_existing_output_needs_force(tmp_path, capsys):
    """Refused before any work (no export is needed to reach the check); --force lets it through."""
    from export.publish import check_destination

    out = tmp_path / "out"
    (out / "mobilevit_xx_small_onnx_fp32").mkdir(parents=True)
    code, err = _run(["onnx", "--variant", "xx_small", "--out", str(out)], capsys)
    assert code == EXIT_BAD_REQUEST and "already exists: pass --force" in err
    assert sorted(p.name for p in out.iterdir()) == ["mobilevit_xx_small_onnx_fp32"]
    check_destination(out / "mobilevit_xx_small_onnx_fp32", force=True)  # what --force changes: no refusal


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; permission bits do not bind")
def test_unwritable_output(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    code, err = _run(["onnx", "--variant", "xx_small", "--out", str(locked)], capsys)
    assert code == EXIT_BAD_REQUEST and "not writable" in err


def test_output_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    code, err = _run(["onnx", "--variant", "xx_small", "--out", str(target / "sub")], capsys)
    assert code == EXIT_BAD_REQUEST and "choose another --out" in err


def test_failed_validation_writes_nothing(tmp_path, capsys, monkeypatch):
    from export import config

    monkeypatch.setitem(config.TOLERANCES, ("onnx", "fp32"), config.Tolerance(0.0, 1.1, 1.0))
    out = tmp_path / "out"
    code, err = _run(["onnx", "--variant", "xx_small", "--out", str(out)], capsys)
    assert code == EXIT_VALIDATION
    assert "failed validation" in err and "cosine similarity" in err and "max abs diff" in err
    assert list(out.iterdir()) == []


def test_a_partly_failed_export_says_exactly_what_was_published(tmp_path, capsys, monkeypatch):
    """fp32 passes and is published; int8 is held to a limit nothing meets and is not; the CLI says which."""
    from export import config

    monkeypatch.setitem(config.TOLERANCES, ("onnx", "int8"), config.Tolerance(0.0, 1.1, 1.0))
    out = tmp_path / "out"
    code, err = _run(["onnx", "--variant", "xx_small", "--precision", "fp32,int8", "--out", str(out)], capsys)
    assert code == EXIT_VALIDATION
    published = out / "mobilevit_xx_small_onnx_fp32" / "mobilevit_xx_small_fp32.onnx"
    assert published.exists() and not (out / "mobilevit_xx_small_onnx_int8").exists()
    assert f"Published (passed validation): {published}" in err and "Not published: onnx int8" in err
    assert "Nothing was written" not in err and "onnx int8 artifact failed validation" in err
    assert sorted(p.name for p in out.iterdir()) == ["mobilevit_xx_small_onnx_fp32"]  # no build leftovers


def test_interrupted_conversion_leaves_nothing(tmp_path, capsys, monkeypatch):
    import export.targets.onnx.convert as onnx_convert

    def broken(model, path, **kw):
        path.write_bytes(b"half an onnx file")
        raise RuntimeError("simulated crash half-way")

    monkeypatch.setattr(onnx_convert, "export_onnx", broken)
    out = tmp_path / "out"
    code, err = _run(["onnx", "--variant", "xx_small", "--out", str(out)], capsys)
    assert code == EXIT_CONVERSION and "simulated crash" in err
    assert list(out.iterdir()) == []


def test_help_explains_choices(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for word in ("coreml", "onnx", "tflite", "executorch", "coreml-fp16", "pixel_shuffle", "palettize8", "int8_dynamic",
                 "bmm", "layernorm_as_linear", "exit codes"):
        assert word in text


def _hf_checkpoint(tmp_path, variant="xx_small"):
    from tests.checkpoint_helpers import _their_state_dict

    path = tmp_path / "pytorch_model.bin"
    torch.save(_their_state_dict("huggingface", variant), path)
    return path


def test_checkpoint_export_takes_its_variant_and_records_its_origin(tmp_path, capsys):
    import json

    ckpt = _hf_checkpoint(tmp_path)
    out = tmp_path / "out"
    assert main(["onnx", "--weights", str(ckpt), "--out", str(out)]) == 0
    manifest = json.loads((out / "mobilevit_xx_small_onnx_fp32" / "manifest.json").read_text())
    assert manifest["variant"] == "xx_small" and manifest["weights"]["synthetic"] is False
    assert manifest["weights"]["format"] == "huggingface" and len(manifest["weights"]["sha256"]) == 64
    assert "SYNTHETIC" not in capsys.readouterr().err


def test_checkpoint_that_does_not_fit_the_variant(tmp_path, capsys):
    ckpt = _hf_checkpoint(tmp_path)
    out = tmp_path / "out"
    code, err = _run(["onnx", "--variant", "small", "--weights", str(ckpt), "--out", str(out)], capsys)
    assert code == EXIT_BAD_REQUEST and "holds MobileViT xx_small weights" in err and "--variant xx_small" in err
    assert not out.exists() or list(out.iterdir()) == []


def test_a_classifier_checkpoint_is_refused_for_segmentation(tmp_path, capsys):
    """ImageNet weights given with --task segmentation: exit 2 before any work, saying what the file holds."""
    ckpt = _hf_checkpoint(tmp_path)
    out = tmp_path / "out"
    code, err = _run(["onnx", "--task", "segmentation", "--weights", str(ckpt), "--out", str(out)], capsys)
    assert code == EXIT_BAD_REQUEST and "classification" in err, err
    assert not out.exists() or list(out.iterdir()) == []


def test_bad_checkpoint_file(tmp_path, capsys):
    bad = tmp_path / "notes.pth"
    bad.write_text("not weights")
    code, err = _run(["coreml", "--weights", str(bad), "--out", str(tmp_path / "out")], capsys)
    assert code == EXIT_BAD_REQUEST and "is not a checkpoint" in err


@pytest.mark.parametrize("poison,message", [(float("nan"), "holds 1 NaN/Inf value"),
                                            (float("inf"), "holds 1 NaN/Inf value"),
                                            (3e9, "magnitude 3e+09")])
def test_corrupt_weights_are_refused_on_load_naming_the_key(tmp_path, capsys, poison, message):
    """A NaN, an Inf or an absurd value in one tensor: exit 2 before any conversion, naming that tensor."""
    from data.synthetic import synthetic_model
    from mobilevit.checkpoints import save_checkpoint

    model = synthetic_model("xx_small")
    with torch.no_grad():
        model.stages[2][1].transformer[0].attn.qkv.weight[5, 7] = poison
    key = "stages.2.1.transformer.0.attn.qkv.weight"
    assert key in model.state_dict()
    ckpt = save_checkpoint(model, tmp_path / "model.pt")
    out = tmp_path / "out"
    code, err = _run(["onnx", "--weights", str(ckpt), "--out", str(out)], capsys)
    assert code == EXIT_BAD_REQUEST and key in err and message in err
    assert not out.exists()


def test_an_unreadable_image_in_images_exits_2_naming_it(tmp_path, capsys):
    """A corrupt JPEG among --images is bad input (exit 2, the file named), refused before any conversion."""
    from PIL import Image

    from data.photos import photo_variants

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, p in enumerate(photo_variants(3)):
        Image.fromarray(p).save(photos / f"{i}.jpg")
    (photos / "3.jpg").write_bytes((photos / "0.jpg").read_bytes()[:300])  # a truncated JPEG
    out = tmp_path / "out"
    code, err = _run(["onnx", "--variant", "xx_small", "--images", str(photos), "--out", str(out)], capsys)
    assert code == EXIT_BAD_REQUEST and "3.jpg" in err and "cannot read image" in err
    assert not out.exists()


def test_a_decompression_bomb_in_images_exits_2_naming_it(tmp_path, capsys, decompression_bomb):
    """A 138-byte PNG claiming 900 Mpixel among --images: PIL refuses it (DecompressionBombError, which is no
    OSError); the export refuses the request (exit 2), names the file and the fix, and writes nothing."""
    from PIL import Image

    from data.photos import photo_variants

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, p in enumerate(photo_variants(3)):
        Image.fromarray(p).save(photos / f"{i}.jpg")
    (photos / "huge.png").write_bytes(decompression_bomb)
    out = tmp_path / "out"
    code, err = _run(["coreml", "--variant", "xx_small", "--images", str(photos), "--out", str(out)], capsys)
    assert code == EXIT_BAD_REQUEST, err[-2000:]
    assert f"image {photos / 'huge.png'} is too large to decode" in err and "900000000 pixels" in err
    assert "resize it to a few megapixels, or remove it from the folder" in err
    assert "Traceback" not in err and not out.exists()


def test_a_full_output_disk_exits_2_naming_it(small_disk, capsys):
    """A real full disk: --out on a 2 MiB tmpfs, and the xx_small Core ML package (weights alone 2.6 MB in fp16)
    does not fit. The ENOSPC reaches us as text inside coremltools' shutil.move error (shutil.Error), wrapped in a
    ConversionError; it must be the output's error: exit 2, the folder and the fix named, no .build-* or
    .partial-* folder and no half package left on the disk."""
    import shutil

    out = small_disk / "out"
    code, err = _run(["coreml", "--variant", "xx_small", "--out", str(out)], capsys)
    assert code == EXIT_BAD_REQUEST, err[-2000:]
    assert f"coreml: the output folder {out} is full (ENOSPC, No space left on device)" in err
    assert "free space on its disk, or choose another --out" in err and "conversion failed" not in err
    assert "Nothing was written." in err
    assert list(small_disk.rglob("*")) == [out]  # hidden folders included: nothing but the empty --out
    assert shutil.disk_usage(small_disk).used == 0


def test_disk_refusals_become_output_errors_however_they_are_reported(small_disk, tmp_path):
    """Real refusals from the 2 MiB tmpfs, as the converters surface them: a bare OSError (torch.onnx, our own
    writes), one wrapped by a ConversionError, one as shutil.move reports a folder copied across disks
    (text in a shutil.Error); a read-only remount gives EROFS. Full counts anywhere (a full system temp folder
    names that folder and TMPDIR), read-only only at --out, and an unrelated OSError is not the output's."""
    import errno
    import shutil
    import subprocess

    from export.errors import ConversionError, OutputError, output_error

    out = small_disk / "out"
    out.mkdir()
    with pytest.raises(OSError) as bare:
        (out / "big.bin").write_bytes(bytes(3 << 20))
    assert bare.value.errno == errno.ENOSPC
    (out / "big.bin").unlink()
    try:
        try:
            raise RuntimeError("converter failed") from bare.value
        except RuntimeError as e:
            raise ConversionError("onnx conversion failed: RuntimeError") from e
    except ConversionError as e:
        wrapped = e
    package = tmp_path / "model.mlpackage"
    package.mkdir()
    (package / "weight.bin").write_bytes(bytes(3 << 20))
    with pytest.raises(shutil.Error) as moved:
        shutil.move(str(package), str(out / "model.mlpackage"))
    assert "[Errno 28]" in str(moved.value)
    shutil.rmtree(out / "model.mlpackage")
    for e in (bare.value, wrapped, moved.value):
        refused = output_error(e, out)
        assert isinstance(refused, OutputError), e
        assert str(refused).startswith(f"the output folder {out} is full (ENOSPC"), refused
    elsewhere = output_error(moved.value, tmp_path / "my-out")  # the full disk is not --out's, but the temp folder's
    assert str(elsewhere).startswith(f"the disk mounted at {small_disk} is full (ENOSPC, No space left on device, "
                                     f"writing {out / 'model.mlpackage' / 'weight.bin'}): free space on it, or set "
                                     "TMPDIR to a folder on another disk"), elsewhere
    assert output_error(FileNotFoundError(errno.ENOENT, "No such file", str(out / "x")), out) is None
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(OSError) as readonly:
        (out / "labels.txt").write_text("a\n")
    assert readonly.value.errno == errno.EROFS
    assert str(output_error(readonly.value, out)).startswith(f"the output folder {out} cannot be written (EROFS")
    assert output_error(readonly.value, tmp_path / "my-out") is None


def _run_in_terminal(cmd: list[str], cwd, timeout: float) -> tuple[int, str, str]:
    """Run ``cmd`` with stderr on a pseudo-terminal 120 columns wide, as a user's shell gives it;
    ``(exit code, stdout, stderr)``. stdout stays a pipe (what the CLI prints there is the paths written)."""
    import fcntl
    import pty
    import struct
    import subprocess
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def drain():  # keep reading, or the child blocks once the terminal's buffer is full
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, cwd=cwd)
    os.close(slave)
    out, _ = proc.communicate(timeout=timeout)
    reader.join(10)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


def test_default_export_prints_only_our_own_lines(tmp_path):
    """`make export-coreml` as a new user runs it, in a terminal: everything on stderr is ours, the
    [export] lines and our progress bars (conversion time, validation photos with ETA), nothing else."""
    import re
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code, stdout, stderr = _run_in_terminal(
        [sys.executable, "-m", "export", "coreml", "--variant", "xx_small", "--out", str(tmp_path)], root, 600)
    assert code == 0, stderr[-3000:]
    shown = [s for s in re.split(r"[\r\n]+", stderr) if s.strip()]  # lines, and each redraw of a bar
    foreign = [s for s in shown if not s.startswith("[export]")]
    assert foreign == [], foreign[:20]
    assert any("validating on 16 real photos" in s for s in shown)
    assert any(s.startswith("[export] coreml fp16: converting: 00:0") for s in shown)  # the elapsed-time bar
    bars = [s for s in shown if s.startswith("[export] coreml fp16 validation:")]
    assert any("16/16" in s for s in bars) and any("<" in s for s in bars), bars[-3:]  # done, and an ETA shown
    assert any(s.startswith("[export] summary: | coreml | fp16 |") and "mobilevit_xx_small_coreml_fp16" in s
               for s in shown)
    assert stdout.strip().endswith(".mlpackage")


def test_a_file_size_limit_is_an_output_error_too(tmp_path):
    """RLIMIT_FSIZE with SIGXFSZ ignored makes a write past the limit fail with EFBIG (a real refusal, in a child
    process so the limit binds nothing else): mapped like a full disk, naming --out."""
    import subprocess
    import sys
    from pathlib import Path

    code = f"""
import resource, signal
from export.errors import output_error
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    open({str(tmp_path / "out" / "model.onnx")!r}, "wb").write(bytes(2 << 20))
except OSError as e:
    print(output_error(e, {str(tmp_path / "out")!r}))
"""
    (tmp_path / "out").mkdir()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert done.stdout.startswith(f"the output folder {tmp_path / 'out'} cannot take a file that large, over the "
                                  "disk's or the process's file-size limit (EFBIG, File too large)"), done.stderr[-999:]


def test_environment_check_prints_one_line_of_its_own():
    """`make setup`'s last step: every runtime imported, and of the ~20 lines their imports print (TensorFlow's C++
    logs, coremltools' and torchao's warnings) none reaches the terminal; only ours, on stdout."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-m", "export.envcheck"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == f"environment ok, torch {torch.__version__}\n"
    assert done.stderr == ""


def test_environment_check_names_a_module_that_does_not_import():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, export.envcheck as e; e.MODULES = ('torch', 'no_such_runtime_xyz'); sys.exit(e.main())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert done.returncode == 1 and done.stdout == ""
    assert "environment broken" in done.stderr
    assert "no_such_runtime_xyz: ModuleNotFoundError: No module named 'no_such_runtime_xyz'" in done.stderr


def test_progress_bars_stay_out_of_logs():
    """Our bars draw only on a terminal: written to a file (a CI log), they print nothing."""
    import io

    from export import quiet

    class Terminal(io.StringIO):
        def __init__(self, tty: bool):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    before = quiet._TERMINAL
    try:
        for tty in (True, False):
            quiet._TERMINAL = Terminal(tty)
            for _ in quiet.progress(range(3), desc="photos", unit="photo"):
                pass
            text = quiet._TERMINAL.getvalue()
            assert ("[export] photos:   0%" in text and "0/3 [00:00<?" in text) if tty else text == ""
    finally:
        quiet._TERMINAL = before


def test_silenced_blocks_c_level_output_unless_verbose(capfd):
    """What TensorFlow's C++ logging does (a raw write to fd 2) is dropped by default and shown with --verbose."""
    from export import quiet

    before = quiet.VERBOSE
    try:
        quiet.VERBOSE = False
        with quiet.silenced():
            os.write(2, b"noise from C++\n")
        assert "noise from C++" not in capfd.readouterr().err
        quiet.VERBOSE = True
        with quiet.silenced():
            os.write(2, b"shown when verbose\n")
        assert "shown when verbose" in capfd.readouterr().err
    finally:
        quiet.VERBOSE = before
