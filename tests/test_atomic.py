"""The one atomic writer (mobilevit.atomic): ordinary permissions, whole or nothing, no temporary left."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mobilevit.atomic import staged_folder, write_atomic, write_bytes, write_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def test_a_written_file_is_ordinary_0644_under_umask_022(tmp_path, umask_022):
    """mkstemp makes 0600; the file must end up as any other the user writes: rw-r--r--."""
    path = write_text(tmp_path / "sub" / "result.json", '{"a": 1}\n')
    assert path == tmp_path / "sub" / "result.json"
    assert path.read_text() == '{"a": 1}\n'
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path / "sub") == ["result.json"]


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    write_bytes(path, b"old content\n")

    def half_then_crash(f):
        f.write(b"new con")
        raise RuntimeError("disk gone half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        write_atomic(path, half_then_crash)
    assert path.read_bytes() == b"old content\n"
    assert os.listdir(tmp_path) == ["result.json"]


def test_a_staged_folder_that_fails_vanishes_and_the_old_one_stays(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(ValueError, match="refused"):
        with staged_folder(dest) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".partial-model-")
            (tmp / "new.txt").write_text("half")
            raise ValueError("refused")
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert os.listdir(dest) == ["old.txt"]


def test_a_staged_folder_that_succeeds_replaces_the_old_one(tmp_path, umask_022):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    (tmp_path / ".partial-model-killed").mkdir()  # what a killed run leaves: cleaned up by the next one
    with staged_folder(dest) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no .partial-*, no .old-*
    assert os.listdir(dest) == ["new.txt"] and (dest / "new.txt").read_text() == "new"
    assert dest.stat().st_mode & 0o777 == 0o755  # mkdtemp makes 0700; a published folder is an ordinary one


def test_benchmark_results_are_written_through_the_atomic_writer(tmp_path, umask_022):
    """report.write_all on the committed bench.json over an older run: each file is a new inode renamed into
    place (a plain open("w") rewrites the old inode in place, half-written if it stops), 0644 (a bare mkstemp
    leaves 0600), no temporary left, and JSON/CSV/markdown byte for byte what the earlier writer committed in
    benchmarks/results (CSV rows keep their \\r\\n ends)."""
    from benchmarks.report import write_all

    results = ROOT / "benchmarks" / "results"
    out = tmp_path / "out"
    out.mkdir()
    before = {}
    for name in ("bench.json", "bench.csv", "bench.md"):
        (out / name).write_text("an older run\n")
        before[name] = (out / name).stat().st_ino
    paths = write_all(json.loads((results / "bench.json").read_text()), out)
    assert sorted(os.listdir(out)) == sorted(p.name for p in paths.values())
    for p in paths.values():
        assert p.stat().st_mode & 0o777 == 0o644, p
    for name, inode in before.items():
        assert (out / name).stat().st_ino != inode, f"{name} was rewritten in place, not replaced"
        assert (out / name).read_bytes() == (results / name).read_bytes(), name
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths.values() if p.suffix == ".png")
