"""ImageNet-1k class names in the order of the public 1000-class heads (WordNet synset order)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_FILE = Path(__file__).parent / "data" / "imagenet1k_labels.txt"


@lru_cache(maxsize=1)
def imagenet_synsets_and_names() -> tuple[tuple[str, str], ...]:
    rows = [line.rstrip("\n").split("\t", 1) for line in _FILE.read_text().splitlines() if line]
    return tuple((s, n) for s, n in rows)


def imagenet_labels() -> list[str]:
    """1000 unique short class names (first lemma of each synset), index = class id.

    Two lemmas occur twice ("crane", "maillot"); those get their synset id appended so that
    label -> probability maps (Core ML classifier outputs) keep all 1000 entries.
    """
    rows = imagenet_synsets_and_names()
    short = [name.split(",")[0].strip() for _, name in rows]
    seen = {n: short.count(n) for n in short}
    return [n if seen[n] == 1 else f"{n} ({s})" for n, (s, _) in zip(short, rows)]


def class_names(num_classes: int, names: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The labels a head of ``num_classes`` outputs: ``names`` if given, ImageNet's for 1000, else class_i."""
    if names:
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for a head of {num_classes} classes")
        return list(names)
    if num_classes == 1000:
        return imagenet_labels()
    return [f"class_{i}" for i in range(num_classes)]
