"""Metadata inside a ``.tflite``: ours (what the runners read) and MediaPipe's (what apps read).

* Our entry, ``mobilevit``: a JSON object in the flatbuffer's ``metadata`` list (input channel order,
  layout, preprocessing, provenance). :class:`export.runners.LiteRTRunner` reads the channel order
  from it, so a model taking RGB is fed RGB by benchmarks and validation alike.
* MediaPipe's image-classifier metadata (``TFLITE_METADATA``, written by MediaPipe's own metadata
  writer): RGB image input with its normalisation, and ``labels.txt`` packed into the file and tied to
  the output tensor. MediaPipe Tasks' ``ImageClassifier`` (Android, iOS, web, Python) needs it to load
  the model. Its schema has no BGR, hence the RGB input of our TFLite models (``TFLiteOptions``).

``mediapipe`` is installed without its dependencies (``requirements-nodeps.lock``): it would pull in
``opencv-contrib-python``, whose ``cv2`` overwrites onnx2tf's ``opencv-python``.
"""
from __future__ import annotations

import json
import struct
import sys
import types
import zipfile
from io import BytesIO

ENTRY = "mobilevit"  # the name of our entry in the model's metadata list
MEDIAPIPE_ENTRY = "TFLITE_METADATA"
LABELS_FILE = "labels.txt"
# the MediaPipe metadata parser version our image-classifier metadata needs (normalisation + a labels file);
# what mediapipe 0.10.21's C++ GetMinimumMetadataParserVersion returns for it
MIN_PARSER_VERSION = "1.0.0"
_ZIP_EPOCH = (0 << 11, (0 << 9) | (1 << 5) | 1)  # DOS time 00:00:00, date 1980-01-01


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def read_entry(buf: bytes, name: str = ENTRY) -> bytes | None:
    """The bytes of the metadata entry ``name`` of a ``.tflite`` flatbuffer, or None."""
    schema = _schema()
    model = schema.Model.GetRootAsModel(buf, 0)
    for i in range(model.MetadataLength()):
        meta = model.Metadata(i)
        if meta.Name() is not None and meta.Name().decode() == name:
            return model.Buffers(meta.Buffer()).DataAsNumpy().tobytes()
    return None


def read_json(buf: bytes) -> dict:
    """Our JSON entry of a ``.tflite`` (empty if it has none: a model exported elsewhere)."""
    data = read_entry(buf)
    return json.loads(data) if data else {}


def declared_preprocessing(path) -> dict:
    """The preprocessing the ``.tflite`` at ``path`` declares in our entry (its own input channel order)."""
    from pathlib import Path

    return read_json(Path(path).read_bytes()).get("preprocessing", {})


def add_entry(buf: bytes, name: str, data: bytes) -> bytes:
    """``buf`` with the metadata entry ``name`` set to ``data`` (replaced if present). Files packed after
    the flatbuffer (MediaPipe's labels) are dropped: add entries before :func:`image_classifier`."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    blob = schema.BufferT()
    blob.data = list(data)
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != name]
    model.buffers.append(blob)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _writers():
    """MediaPipe's metadata writers. mediapipe 1.2.x's ``metadata.py`` imports a compiled helper it no longer
    ships (``mediapipe.tasks.cc...._pywrap_metadata_version``) for a single call, the minimum parser
    version; it is stood in for by a module returning :data:`MIN_PARSER_VERSION` only if the import fails."""
    try:
        import mediapipe.tasks.cc.metadata.python._pywrap_metadata_version  # noqa: F401
    except ImportError:
        name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
        stub = types.ModuleType(name)
        stub.GetMinimumMetadataParserVersion = lambda buf: MIN_PARSER_VERSION
        for parent in ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", "mediapipe.tasks.cc.metadata.python"):
            sys.modules.setdefault(parent, types.ModuleType(parent))
        sys.modules[name] = stub
        sys.modules["mediapipe.tasks.cc.metadata.python"]._pywrap_metadata_version = stub
    # mediapipe imports TensorFlow only for file I/O, with a fallback; not loading it saves 3 s and its log lines
    block = "tensorflow" not in sys.modules
    if block:
        sys.modules["tensorflow"] = None
    try:
        from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer
    finally:
        if block and sys.modules.get("tensorflow", False) is None:
            del sys.modules["tensorflow"]
    return metadata_writer


def image_classifier(buf: bytes, labels: list[str], *, name: str, description: str, pixel_scale: float) -> bytes:
    """``buf`` with MediaPipe image-classifier metadata: RGB input, ``x = pixel * pixel_scale`` (mean 0,
    std ``1 / pixel_scale``), the output's ``labels.txt``. The output stays as the model computes it (logits)."""
    mw = _writers()
    writer = mw.MetadataWriter(bytearray(buf))
    writer.add_general_info(name, description)
    writer.add_image_input([0.0], [1.0 / pixel_scale])
    writer.add_classification_output(mw.Labels().add(list(labels), exported_filename=LABELS_FILE))
    out, _ = writer.populate()
    del writer  # now: its __del__ removes a temporary folder, and fails noisily if left to interpreter exit
    return fixed_zip_times(bytes(out))


def image_segmenter(buf: bytes, labels: list[str], *, name: str, description: str, pixel_scale: float) -> bytes:
    """``buf`` with MediaPipe image-segmenter metadata: RGB input as :func:`image_classifier`, the output's
    ``labels.txt``, no activation (the output is the logits, ``[1, h, w, K]``).

    MediaPipe's ``ImageSegmenter`` returns confidence masks that are these logits upsampled to the image
    (bilinear, half-pixel centres, as ``mobilevit.segmentation.upsample_logits``), but its category mask takes
    the argmax of an align-corners upsampling (ml-cvnets' convention): near class boundaries it can differ
    from ``argmax(confidence masks)``."""
    mw = _writers()
    from mediapipe.tasks.python.metadata.metadata_writers import image_segmenter as seg

    writer = seg.MetadataWriter.create(bytearray(buf), [0.0], [1.0 / pixel_scale],
                                       labels=mw.Labels().add(list(labels), exported_filename=LABELS_FILE),
                                       activation=seg.Activation.NONE)
    writer.writer.add_general_info(name, description)  # our name instead of the generic "ImageSegmenter"
    out, _ = writer.populate()
    del writer
    return fixed_zip_times(bytes(out))


def fixed_zip_times(buf: bytes) -> bytes:
    """The files packed after the flatbuffer (a zip) with every timestamp set to 1980-01-01 00:00:00.

    MediaPipe packs ``labels.txt`` with the current time, which would make two identical exports differ."""
    try:
        zf = zipfile.ZipFile(BytesIO(buf))
    except zipfile.BadZipFile:
        return buf
    out = bytearray(buf)
    with zf:
        for info in zf.infolist():  # header offsets are absolute: zipfile accounts for the prefix
            local = info.header_offset
            if out[local:local + 4] != b"PK\x03\x04":
                raise ValueError(f"no zip local header for {info.filename} at {local}")
            struct.pack_into("<HH", out, local + 10, *_ZIP_EPOCH)
        pos = zf.start_dir
        for _ in zf.infolist():
            if out[pos:pos + 4] != b"PK\x01\x02":
                raise ValueError(f"no zip central directory header at {pos}")
            struct.pack_into("<HH", out, pos + 12, *_ZIP_EPOCH)
            n, m, k = struct.unpack_from("<HHH", out, pos + 28)
            pos += 46 + n + m + k
    return bytes(out)


def packed_files(buf: bytes) -> dict[str, bytes]:
    """The files packed after the flatbuffer (``labels.txt``), by name."""
    try:
        with zipfile.ZipFile(BytesIO(buf)) as zf:
            return {n: zf.read(n) for n in zf.namelist()}
    except zipfile.BadZipFile:
        return {}
