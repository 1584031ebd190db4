"""Labelled image folders for accuracy runs: which class each file is, read from the folder layout.

Three layouts, detected (and named in the output) by :func:`scan`:

* ``synset``: ``DIR/n01440764/*.JPEG`` (the ImageNet validation set laid out by class). Folder names
  are WordNet ids; a 1000-class head maps them through the shipped label table (synset order, the
  order every public MobileViT head uses), a head that carries synset ids as class names by name.
* ``class-name``: ``DIR/cat/*.jpg`` for a checkpoint that carries its class names (ours, or a Hugging
  Face folder whose ``config.json`` has ``id2label``). Names match case-insensitively, with ``_``/``-``
  as spaces, and on a 1000-class head also against the first name of each ImageNet class.
* ``flat+labels``: the images directly in ``DIR`` plus ``--labels FILE``: a ``filename,class_index``
  CSV (a header line is allowed; Caffe's ``val.txt``, ``filename index`` separated by a space, reads
  the same), or one label per line in sorted file order (a class index of the head, or a synset id).

Files stream from disk in batches (:func:`batches`): only one batch of pixels is ever in memory.
Every problem raises a :class:`FolderError` that names the problem and the fix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from mobilevit.labels import class_names as head_names
from mobilevit.labels import imagenet_synsets_and_names
from mobilevit.preprocess import resize_and_crop, to_tensor

from .datasets import IMAGE_EXTS, DatasetError

SYNSET = re.compile(r"^n\d{8}$")
LAYOUTS = ("synset", "class-name", "flat+labels")
MAX_NAMED = 6  # names quoted in an error message before "... (+N more)"


class FolderError(DatasetError):
    """A labelled folder that cannot be scored against this checkpoint."""


class UnreadableImageError(FolderError):
    """An image file that cannot be decoded (corrupt, truncated, or not an image)."""


def _named(items) -> str:
    items = list(items)
    more = f" ... (+{len(items) - MAX_NAMED} more)" if len(items) > MAX_NAMED else ""
    return ", ".join(repr(str(i)) for i in items[:MAX_NAMED]) + more


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


@dataclass
class LabelledFiles:
    """Image files and their class index in the checkpoint's head."""

    root: Path
    files: list[Path]
    labels: np.ndarray  # [N] int64, index into the head
    layout: str  # one of LAYOUTS
    class_names: list[str]  # the head's names, index = class id
    num_classes: int

    def __len__(self) -> int:
        return len(self.files)

    @property
    def names(self) -> list[str]:
        """File names relative to the root (what outputs and error messages quote)."""
        return [str(f.relative_to(self.root)) for f in self.files]

    def describe(self) -> str:
        present = len(np.unique(self.labels))
        return (f"{len(self)} images in {present} classes, layout {self.layout} "
                f"({self.root}), scored against a {self.num_classes}-class head")

    def subset(self, index: np.ndarray) -> LabelledFiles:
        return LabelledFiles(self.root, [self.files[i] for i in index], self.labels[index], self.layout,
                             self.class_names, self.num_classes)

    def balanced(self, limit: int | None, seed: int = 0) -> LabelledFiles:
        """At most ``limit`` files, as even across classes as possible (seeded), in the original order."""
        if not limit or limit >= len(self):
            return self
        rng = np.random.default_rng(seed)
        per_class = [rng.permutation(np.flatnonzero(self.labels == c)) for c in np.unique(self.labels)]
        # round-robin: the k-th pick of every class before the (k+1)-th of any
        order = [idx[k] for k in range(max(len(p) for p in per_class)) for idx in per_class if k < len(idx)]
        return self.subset(np.sort(np.array(order[:limit])))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _match_names(folders: list[str], class_names: list[str], num_classes: int) -> dict[str, int]:
    """Folder name -> class index by name; refuses unknown and ambiguous names, naming both sides."""
    lookup: dict[str, set[int]] = {}
    for i, n in enumerate(class_names):
        keys = {_norm(n)}
        if num_classes == 1000:  # ImageNet names are "tench, Tinca tinca": the first name also counts
            keys.add(_norm(n.split(",")[0]))
        for k in keys:
            lookup.setdefault(k, set()).add(i)
    unknown = [f for f in folders if _norm(f) not in lookup]
    if unknown:
        raise FolderError(
            f"{len(unknown)} class folder(s) match no class of the checkpoint's {num_classes}-class head: "
            f"{_named(unknown)}; the head's classes are {_named(class_names)}. Rename the folders to the "
            "checkpoint's class names, or give a flat folder with --labels")
    ambiguous = [f for f in folders if len(lookup[_norm(f)]) > 1]
    if ambiguous:
        raise FolderError(f"class folder(s) {_named(ambiguous)} match more than one class of the head: use the "
                          "full class name, or synset folders, or a flat folder with --labels")
    return {f: next(iter(lookup[_norm(f)])) for f in folders}


def _synset_index(folders: list[str], class_names: list[str] | None, num_classes: int) -> dict[str, int]:
    if class_names and all(SYNSET.match(n) for n in class_names):
        return _match_names(folders, class_names, num_classes)
    if num_classes != 1000:
        raise FolderError(
            f"the folder has ImageNet synset folders ({_named(folders)}), which map onto a 1000-class head, but "
            f"the checkpoint's head has {num_classes} classes"
            + (f" ({_named(class_names)})" if class_names else "")
            + ": score a fine-tuned checkpoint on class-name folders, or on a flat folder with --labels")
    table = {s: i for i, (s, _) in enumerate(imagenet_synsets_and_names())}
    unknown = [f for f in folders if f not in table]
    if unknown:
        raise FolderError(f"synset folder(s) {_named(unknown)} are not among the 1000 ImageNet-1k classes of the "
                          "head: remove them (ImageNet-21k synsets have no output in a 1k head)")
    return {f: table[f] for f in folders}


def _read_label_file(path: Path, files: list[Path], num_classes: int) -> np.ndarray:
    """Labels for ``files`` (sorted) from a CSV/space-separated ``name,index`` file or a one-per-line list."""
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise FolderError(f"cannot read the label file {path} ({e}): pass a readable text file to --labels") from e
    if not lines:
        raise FolderError(f"the label file {path} is empty: give one label per image")
    table = {s: i for i, (s, _) in enumerate(imagenet_synsets_and_names())}

    def index(value: str, where: str) -> int:
        if SYNSET.match(value):
            if num_classes != 1000 or value not in table:
                raise FolderError(f"{where}: synset {value} does not name a class of this {num_classes}-class head")
            return table[value]
        try:
            i = int(value)
        except ValueError:
            raise FolderError(f"{where}: {value!r} is not a class index (0 to {num_classes - 1}) or a synset id; "
                              "fix the label file") from None
        if not 0 <= i < num_classes:
            raise FolderError(f"{where}: class index {i} is out of range for the checkpoint's {num_classes}-class "
                              f"head (0 to {num_classes - 1}); indices are 0-based")
        return i

    if any("," in ln or len(ln.split()) == 2 for ln in lines):  # filename,index (or "filename index")
        rows = [re.split(r"\s*,\s*|\s+", ln, maxsplit=1) for ln in lines]
        if len(rows[0]) == 2 and not rows[0][1].strip().lstrip("-").isdigit() and not SYNSET.match(rows[0][1]):
            rows = rows[1:]  # a header line
        by_name = {}
        for n, row in enumerate(rows, 1):
            if len(row) != 2:
                raise FolderError(f"{path} line {n}: expected 'filename,class_index', got {','.join(row)!r}")
            by_name[Path(row[0]).name] = index(row[1].strip(), f"{path} line {n}")
        names = [f.name for f in files]
        missing = [n for n in names if n not in by_name]
        if missing:
            raise FolderError(f"{path} has no label for {len(missing)} image(s): {_named(missing)}; "
                              "add them or remove those images")
        extra = sorted(set(by_name) - set(names))
        if extra:
            raise FolderError(f"{path} labels {len(extra)} file(s) that are not in the folder: {_named(extra)}; "
                              "check --images and --labels belong together")
        return np.array([by_name[n] for n in names], dtype=np.int64)
    values = [int(v) for v in lines if v.lstrip("-").isdigit()]
    if (len(values) == len(lines) and num_classes > 1 and min(values) >= 1 and max(values) == num_classes
            and 0 not in values):
        raise FolderError(
            f"{path} holds labels 1 to {num_classes}: this looks like a 1-based list such as ImageNet's "
            "ILSVRC2012_validation_ground_truth.txt, whose ids follow the devkit's meta.mat order, not the "
            "synset order of the public heads. Give 0-based class indices in synset order (Caffe's val.txt), "
            "one synset id per line, or a filename,class_index CSV")
    if len(lines) != len(files):
        raise FolderError(f"{path} has {len(lines)} labels but the folder has {len(files)} images: a one-per-line "
                          "label file must have exactly one line per image, in sorted file-name order")
    return np.array([index(v, f"{path} line {n}") for n, v in enumerate(lines, 1)], dtype=np.int64)


def scan(root: str | Path, num_classes: int, class_names: list[str] | None = None,
         labels_file: str | Path | None = None) -> LabelledFiles:
    """Detect ``root``'s layout and label every image file for a head of ``num_classes`` classes.

    ``class_names`` are the checkpoint's own (None if it carries none; a 1000-class head then uses
    ImageNet's). Nothing is decoded here: unreadable images surface in :func:`batches`.
    """
    root = Path(root)
    if not root.is_dir():
        raise FolderError(f"image folder {root} does not exist: pass --images DIR, a folder of class folders "
                          "(DIR/n01440764/*.JPEG or DIR/cat/*.jpg) or of images with --labels FILE")
    names = head_names(num_classes, class_names)
    if labels_file is not None:
        files = _images_in(root)
        if not files:
            raise FolderError(f"{root} holds no images ({', '.join(sorted(IMAGE_EXTS))}) directly: with --labels "
                              "the images sit in the folder itself, not in class folders")
        return LabelledFiles(root, files, _read_label_file(Path(labels_file), files, num_classes), "flat+labels",
                             names, num_classes)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and _images_in(p))
    if not folders:
        flat = bool(_images_in(root))
        raise FolderError(
            f"{root} has no class folders with images" + (" (its images sit directly in it)" if flat else "")
            + ": lay it out as DIR/<synset or class name>/*.jpg, or pass --labels FILE for a flat folder")
    if all(SYNSET.match(f) for f in folders):
        layout, index = "synset", _synset_index(folders, class_names, num_classes)
    else:
        if class_names is None and num_classes != 1000:
            raise FolderError(
                f"{root} has class-name folders ({_named(folders)}) but the checkpoint carries no class names for "
                f"its {num_classes}-class head: save it with class_names (mobilevit.checkpoints.save_checkpoint), "
                "or give a flat folder with --labels")
        if len(folders) > num_classes:
            raise FolderError(f"{root} has {len(folders)} class folders but the checkpoint's head has "
                              f"{num_classes} classes ({_named(names)}): they cannot be the same classes")
        full = class_names or [n for _, n in imagenet_synsets_and_names()]  # 1000 classes: ImageNet's full names
        layout, index = "class-name", _match_names(folders, full, num_classes)
    files, labels = [], []
    for f in folders:
        for p in _images_in(root / f):
            files.append(p)
            labels.append(index[f])
    return LabelledFiles(root, files, np.array(labels, dtype=np.int64), layout, names, num_classes)


def decode(path: Path) -> np.ndarray:
    """uint8 RGB pixels of one file, or :class:`UnreadableImageError` naming it (a file over PIL's
    decompression-bomb limit too: its header is read, its pixels never are)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:
        why = str(e).rstrip(".")
        raise UnreadableImageError(f"image {path} is too large to decode ({why}): resize it to a few megapixels, "
                                   "or remove it from the folder") from e
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise UnreadableImageError(
            f"cannot read image {path} ({type(e).__name__}: {e}): replace or delete it, or pass --skip-bad to "
            "count and list unreadable files instead") from e


def batches(files: list[Path], size: int, cfg, batch: int, skip: set[int] = frozenset(), start: int = 0,
            skip_bad: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray, list[int]]]:
    """``(index, x, bad)`` per batch from ``start``: file indices, preprocessed ``[b, 3, S, S]`` float32 in
    the model's channel order and scale (``cfg.preprocessing``), and the indices that could not be read
    (only with ``skip_bad``; otherwise :class:`UnreadableImageError`). Files in ``skip`` are not read."""
    short = cfg.preprocessing.short_side(size)
    for lo in range(start, len(files), batch):
        idx, crops, bad = [], [], []
        for i in range(lo, min(lo + batch, len(files))):
            if i in skip:
                continue
            try:
                crops.append(resize_and_crop(decode(files[i]), size, short))
                idx.append(i)
            except UnreadableImageError:
                if not skip_bad:
                    raise
                bad.append(i)
        x = to_tensor(crops, cfg.preprocessing).numpy() if crops else np.zeros((0, 3, size, size), np.float32)
        yield np.array(idx, dtype=np.int64), x, bad
