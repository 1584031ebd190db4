"""``python -m benchmarks.memory`` (``make bench-accuracy-memory``): an accuracy run's memory does not grow
with the number of images.

The same accuracy run (``python -m benchmarks.accuracy``: PyTorch and ONNX fp32, batch 32) goes over a
class-balanced subset of ``SMALL`` and of ``LARGE`` images of one synset folder (photos from the installed
packages, written as JPEG), each in a fresh child process that reports its own peak RSS. Images stream
from disk, so the larger run may use at most ``BOUND_MB`` more: keeping the extra 300 crops in memory
would alone take 300 x 3 x 256 x 256 x 4 bytes = 225 MiB. Exits 1 (and says so) when the bound is broken.
Results: ``benchmarks/results/accuracy_memory.{json,md}``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mobilevit.atomic import write_text

RESULTS = Path(__file__).parent / "results"
SMALL, LARGE = 100, 400
BOUND_MB = 64.0
SYNSETS = 20  # classes the photos are filed under

_CHILD = """
import resource, sys
from benchmarks.accuracy import main
code = main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def make_inputs(work: Path, count: int = LARGE) -> tuple[Path, Path]:
    """A synthetic xx_small checkpoint (our format) and ``count`` photos in ``SYNSETS`` synset folders."""
    from PIL import Image

    from data.photos import photo_variants
    from data.synthetic import synthetic_model
    from mobilevit.checkpoints import save_checkpoint
    from mobilevit.labels import imagenet_synsets_and_names

    ckpt = save_checkpoint(synthetic_model("xx_small"), work / "model.pt", origin="synthetic-calibrated")
    synsets = [s for s, _ in imagenet_synsets_and_names()][::1000 // SYNSETS][:SYNSETS]
    for i, photo in enumerate(photo_variants(count, seed=11)):
        folder = work / "images" / synsets[i % SYNSETS]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(folder / f"photo_{i:04d}.JPEG", quality=90)
    return ckpt, work / "images"


def peak_rss_mb(ckpt: Path, images: Path, limit: int, out: Path) -> float:
    cmd = [sys.executable, "-c", _CHILD, "--weights", str(ckpt), "--images", str(images), "--targets", "onnx",
           "--precisions", "fp32", "--limit", str(limit), "--batch", "32", "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"accuracy run over {limit} images failed ({done.returncode}):\n{done.stderr[-2000:]}")
    kb = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KB"))
    return kb / 1024


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="accmem-") as tmp:
        work = Path(tmp)
        ckpt, images = make_inputs(work)
        peaks = {n: peak_rss_mb(ckpt, images, n, work / f"out{n}") for n in (SMALL, LARGE)}
    growth = peaks[LARGE] - peaks[SMALL]
    ok = growth <= BOUND_MB
    result = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "images": [SMALL, LARGE],
              "peak_rss_mb": {str(n): round(v, 1) for n, v in peaks.items()}, "growth_mb": round(growth, 1),
              "bound_mb": BOUND_MB, "within_bound": ok, "targets": "pytorch fp32, onnx fp32", "batch": 32}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / "accuracy_memory.json", json.dumps(result, indent=1) + "\n")
    md = (f"Peak RSS of `python -m benchmarks.accuracy` (PyTorch + ONNX fp32, batch 32, xx_small, "
          f"{result['created']}): "
          f"{peaks[SMALL]:.0f} MB over {SMALL} images, {peaks[LARGE]:.0f} MB over {LARGE} images: "
          f"{growth:+.1f} MB for {LARGE - SMALL} more images (bound {BOUND_MB:.0f} MB: "
          f"{'met' if ok else 'BROKEN'}).\n")
    write_text(RESULTS / "accuracy_memory.md", md)
    print(md, end="")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
