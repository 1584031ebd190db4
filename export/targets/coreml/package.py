"""An ``.mlpackage`` read without importing coremltools: its model spec and its weight file.

``import coremltools`` imports TensorFlow, torchao and ExecuTorch's EXIR when they are installed (8.3 s in a fresh
process on this project's machine, ``python -X importtime``): a price every fresh process that only *runs* a
package paid, a Ray worker's first batch of a Core ML artifact among them. The spec's protobuf classes are
coremltools' own generated modules, loaded from its ``proto`` folder without the package's ``__init__`` (where
coremltools is already imported, its own); the weight file is MIL's blob storage (version 2, little-endian, every
entry 64-byte aligned):

* a 64-byte header: ``uint32 count, uint32 version (2)``, padding;
* per blob, at the offset the program's ``blobFileValue`` gives, 64 bytes of metadata: ``uint32 sentinel
  (0xDEADBEEF), uint32 dtype, uint64 size in bytes, uint64 data offset, uint64 padding bits``, reserved;
* the data at its offset.

``tests/test_coreml_reference.py`` reads every blob of xx_small's fp32 package and of a program with fp16, fp32,
int8 and uint8 blobs both ways (coremltools' own ``_BlobStorageReader`` the peer) and asks for the same bytes.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

from ...errors import ExportError

SENTINEL = 0xDEADBEEF
HEADER_BYTES = METADATA_BYTES = 64
_ALIAS = "_mobilevit_coreml_proto"  # coremltools' generated protobuf modules, imported under this package name


class PackageError(ExportError, ValueError):
    """The file is not the ``.mlpackage`` (or weight file) it claims to be."""


def model_pb2() -> types.ModuleType:
    """coremltools' ``Model_pb2``: its own module where coremltools is imported, else the same generated file
    loaded under a private package name (its relative imports stay within the ``proto`` folder; protobuf gives
    both the same message classes)."""
    if "coremltools" in sys.modules:
        return importlib.import_module("coremltools.proto.Model_pb2")
    if _ALIAS not in sys.modules:
        found = importlib.util.find_spec("coremltools")
        if found is None or found.origin is None:
            raise PackageError("coremltools is not installed: it carries the Core ML spec's protobuf classes "
                               "(`make setup` installs it)")
        package = types.ModuleType(_ALIAS)
        package.__path__ = [str(Path(found.origin).parent / "proto")]
        sys.modules[_ALIAS] = package
    return importlib.import_module(f"{_ALIAS}.Model_pb2")


def model_file(path: Path) -> Path:
    """The spec file of the ``.mlpackage`` at ``path``, as its ``Manifest.json`` names it."""
    manifest = path / "Manifest.json"
    try:
        entries = json.loads(manifest.read_text())
        item = entries["itemInfoEntries"][entries["rootModelIdentifier"]]
        return path / "Data" / item["path"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PackageError(f"{path}: its Manifest.json does not name a root model ({e}): export the package "
                           "again with `python -m export coreml`") from e


def load_spec(path: str | Path):
    """The ``Model`` protobuf of the ``.mlpackage`` at ``path`` (what ``coremltools.utils.load_spec`` returns)."""
    path = Path(path)
    spec_file = model_file(path)
    try:
        data = spec_file.read_bytes()
    except OSError as e:
        raise PackageError(f"{path}: cannot read its model spec {spec_file.name} ({e})") from e
    spec = model_pb2().Model()
    try:
        spec.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise PackageError(f"{path}: {spec_file.name} is not a Core ML model spec ({e})") from e
    return spec


class BlobFile:
    """A MIL weight file (``weight.bin``), read once; ``array(offset, dtype)`` is the blob whose metadata sits at
    ``offset`` (a ``blobFileValue.offset``) as a flat array of ``dtype``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data = np.fromfile(self.path, np.uint8)
        if len(self.data) < HEADER_BYTES:
            raise PackageError(f"{self.path}: {len(self.data)} bytes, shorter than a weight file's header")
        version = int(self.data[4:8].view("<u4")[0])
        if version != 2:
            raise PackageError(f"{self.path}: weight file version {version}; this reader knows version 2")

    def raw(self, offset: int) -> np.ndarray:
        """The bytes of the blob whose metadata is at ``offset``."""
        end = offset + METADATA_BYTES
        if offset < HEADER_BYTES or end > len(self.data):
            raise PackageError(f"{self.path}: blob metadata offset {offset} is outside the file")
        meta = self.data[offset:end]
        sentinel = int(meta[:4].view("<u4")[0])
        size, start, padding_bits = (int(v) for v in meta[8:32].view("<u8"))
        if sentinel != SENTINEL:
            raise PackageError(f"{self.path}: no blob at offset {offset} (sentinel {sentinel:#x})")
        if padding_bits or start + size > len(self.data):
            raise PackageError(f"{self.path}: the blob at offset {offset} is "
                               + ("of a sub-byte type" if padding_bits else "cut short"))
        return self.data[start:start + size]

    def array(self, offset: int, dtype) -> np.ndarray:
        raw = self.raw(offset)
        dtype = np.dtype(dtype).newbyteorder("<")
        if len(raw) % dtype.itemsize:
            raise PackageError(f"{self.path}: the blob at offset {offset} is {len(raw)} bytes, not a whole number "
                               f"of {dtype}")
        return raw.view(dtype).astype(dtype.newbyteorder("="), copy=True)
