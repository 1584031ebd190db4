"""Paste generated result tables into README.md between ``<!-- results:NAME -->`` markers.

``python -m benchmarks.readme`` (``make readme``) copies ``benchmarks/results/NAME.md`` into the
block of the same name, so the README's numbers are never typed by hand.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from mobilevit.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def update(readme: Path = ROOT / "README.md", results: Path = RESULTS) -> list[str]:
    text = readme.read_text()
    done = []

    def fill(m):
        src = results / f"{m.group('name')}.md"
        if not src.exists():
            return m.group(0)
        done.append(m.group("name"))
        return m.group(1) + src.read_text().rstrip() + "\n" + m.group(4)

    write_text(readme, BLOCK.sub(fill, text))
    return done


if __name__ == "__main__":
    print("updated:", ", ".join(update()) or "nothing")
    sys.exit(0)
