"""TFLite model metadata (the ``TFLITE_METADATA`` buffer Android's tooling reads).

The tflite-support package that normally writes it pins protobuf 3.20, which cannot live
beside onnx, so this module writes the same flatbuffer itself (schema
``tensorflow_lite_support/metadata/metadata_schema.fbs``, file identifier ``M001``), for the
subset a classifier or embedder needs: model name, description, version, author, license;
per input an image/feature content description and normalisation (mean/std); per output
a description and the labels file as a ``TENSOR_AXIS_LABELS`` associated file. As
MetadataPopulator does, associated files are appended to the ``.tflite`` as a zip, so the
Android Task Library and ML Model Binding find ``labels.txt`` inside the model.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

METADATA_NAME = "TFLITE_METADATA"
MIN_PARSER_VERSION = "1.0.0"
_TENSOR_AXIS_LABELS = 2
_IMAGE_PROPERTIES, _FEATURE_PROPERTIES = 2, 1
_NORMALIZATION_OPTIONS = 1
_GRAYSCALE, _RGB = 2, 1


@dataclass
class TensorInfo:
    """What the metadata says about one tensor."""

    name: str
    description: str = ""
    image: bool = False
    channels: int = 3
    size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    labels_file: str | None = None


@dataclass
class ModelInfo:
    name: str
    description: str
    version: str = "1"
    author: str = "edgepack"
    license: str = ""
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)


def _strings(b: Any, values: dict[str, str]) -> dict[str, int]:
    return {k: b.CreateString(v) for k, v in values.items() if v}


def _vector_of_tables(b: Any, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _float_vector(b: Any, values: list[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(float(v))
    return b.EndVector()


def _associated_file(b: Any, name: str, description: str) -> int:
    s = _strings(b, {"name": name, "description": description})
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, s["name"], 0)
    if "description" in s:
        b.PrependUOffsetTRelativeSlot(1, s["description"], 0)
    b.PrependInt8Slot(2, _TENSOR_AXIS_LABELS, 0)
    return b.EndObject()


def _tensor(b: Any, t: TensorInfo) -> int:
    files = [_associated_file(b, t.labels_file, "Labels for the categories of this output")] if t.labels_file else []
    files_vec = _vector_of_tables(b, files) if files else None
    # content: ImageProperties (color space, default size) or FeatureProperties
    if t.image:
        size_off = None
        if t.size:
            b.StartObject(2)
            b.PrependUint32Slot(0, t.size[1], 0)
            b.PrependUint32Slot(1, t.size[0], 0)
            size_off = b.EndObject()
        b.StartObject(2)
        b.PrependInt8Slot(0, _GRAYSCALE if t.channels == 1 else _RGB, 0)
        if size_off is not None:
            b.PrependUOffsetTRelativeSlot(1, size_off, 0)
        props, props_type = b.EndObject(), _IMAGE_PROPERTIES
    else:
        b.StartObject(0)
        props, props_type = b.EndObject(), _FEATURE_PROPERTIES
    b.StartObject(3)
    b.PrependUint8Slot(0, props_type, 0)
    b.PrependUOffsetTRelativeSlot(1, props, 0)
    content = b.EndObject()
    units = None
    if t.mean is not None and t.std is not None:
        mean, std = _float_vector(b, t.mean), _float_vector(b, t.std)
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, mean, 0)
        b.PrependUOffsetTRelativeSlot(1, std, 0)
        norm = b.EndObject()
        b.StartObject(2)
        b.PrependUint8Slot(0, _NORMALIZATION_OPTIONS, 0)
        b.PrependUOffsetTRelativeSlot(1, norm, 0)
        units = _vector_of_tables(b, [b.EndObject()])
    s = _strings(b, {"name": t.name, "description": t.description})
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(0, s["name"], 0)
    if "description" in s:
        b.PrependUOffsetTRelativeSlot(1, s["description"], 0)
    b.PrependUOffsetTRelativeSlot(3, content, 0)
    if units is not None:
        b.PrependUOffsetTRelativeSlot(4, units, 0)
    if files_vec is not None:
        b.PrependUOffsetTRelativeSlot(6, files_vec, 0)
    return b.EndObject()


def build_metadata(info: ModelInfo) -> bytes:
    """The ``M001`` metadata flatbuffer for ``info``."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    ins = _vector_of_tables(b, [_tensor(b, t) for t in info.inputs])
    outs = _vector_of_tables(b, [_tensor(b, t) for t in info.outputs])
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(2, ins, 0)
    b.PrependUOffsetTRelativeSlot(3, outs, 0)
    subgraph = b.EndObject()
    subgraphs = _vector_of_tables(b, [subgraph])
    s = _strings(b, {"name": info.name, "description": info.description, "version": info.version,
                     "author": info.author, "license": info.license, "min": MIN_PARSER_VERSION})
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(0, s["name"], 0)
    for slot, key in ((1, "description"), (2, "version"), (4, "author"), (5, "license")):
        if key in s:
            b.PrependUOffsetTRelativeSlot(slot, s[key], 0)
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    b.PrependUOffsetTRelativeSlot(7, s["min"], 0)
    b.Finish(b.EndObject(), file_identifier=b"M001")
    return bytes(b.Output())


def _strip_zip(model: bytes) -> bytes:
    """The flatbuffer part of a .tflite that may already carry appended files."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as z:
            first = min((i.header_offset for i in z.infolist()), default=len(model))
            return model[:first]
    except zipfile.BadZipFile:
        return model


def add_metadata(model: bytes, info: ModelInfo, files: dict[str, bytes]) -> bytes:
    """Return ``model`` with the metadata buffer set and ``files`` appended as a zip.

    Raises:
        ValueError: the model keeps buffers outside the flatbuffer (large models), where
            rewriting it would move them.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    fb = _strip_zip(model)
    m = schema.ModelT.InitFromPackedBuf(fb, 0)
    if any(getattr(buf, "offset", 0) for buf in (m.buffers or [])):
        raise ValueError("the model stores buffers outside the flatbuffer; metadata not written")
    data = build_metadata(info)
    m.metadata = [md for md in (m.metadata or []) if md.name not in (METADATA_NAME, METADATA_NAME.encode())]
    buf = schema.BufferT()
    buf.data = list(data)
    m.buffers.append(buf)
    md = schema.MetadataT()
    md.name = METADATA_NAME
    md.buffer = len(m.buffers) - 1
    m.metadata.append(md)
    b = flatbuffers.Builder(len(fb) + len(data) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    out = bytes(b.Output())
    if files:
        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w", compression=zipfile.ZIP_STORED) as z:
            for name, content in files.items():
                z.writestr(name, content)
        out = _append_zip(out, zbuf.getvalue())
    return out


def _append_zip(prefix: bytes, zip_bytes: bytes) -> bytes:
    """Concatenate so the zip's offsets stay right: rewrite it after the prefix."""
    src = zipfile.ZipFile(io.BytesIO(zip_bytes))
    out = io.BytesIO()
    out.write(prefix)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            z.writestr(info, src.read(info.filename))
    return out.getvalue()


def read_metadata(model: bytes) -> dict[str, Any] | None:
    """Read back the metadata this module writes (names, normalisation, label files)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    fb = _strip_zip(model)
    m = schema.ModelT.InitFromPackedBuf(fb, 0)
    for md in m.metadata or []:
        name = md.name.decode() if isinstance(md.name, bytes) else md.name
        if name == METADATA_NAME:
            raw = bytes(bytearray(m.buffers[md.buffer].data))
            break
    else:
        return None
    if raw[4:8] != b"M001":
        return None
    tab = flatbuffers.table.Table(raw, flatbuffers.encode.Get(flatbuffers.packer.uoffset, raw, 0))

    def string(t: Any, slot: int) -> str | None:
        o = t.Offset(4 + 2 * slot)
        return t.String(o + t.Pos).decode() if o else None

    def tables(t: Any, slot: int) -> list[Any]:
        o = t.Offset(4 + 2 * slot)
        if not o:
            return []
        start, n = t.Vector(o), t.VectorLen(o)
        return [flatbuffers.table.Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(n)]

    def floats(t: Any, slot: int) -> list[float]:
        o = t.Offset(4 + 2 * slot)
        if not o:
            return []
        start, n = t.Vector(o), t.VectorLen(o)
        return [t.Get(flatbuffers.number_types.Float32Flags, start + 4 * i) for i in range(n)]

    def sub(t: Any, slot: int) -> Any:
        o = t.Offset(4 + 2 * slot)
        return flatbuffers.table.Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None

    def tensor(t: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"name": string(t, 0), "description": string(t, 1)}
        units = tables(t, 4)
        if units:
            norm = sub(units[0], 1)
            d["mean"], d["std"] = floats(norm, 0), floats(norm, 1)
        d["associated_files"] = [string(f, 0) for f in tables(t, 6)]
        return d

    sg = tables(tab, 3)
    files: list[str] = []
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as z:
            files = z.namelist()
    except zipfile.BadZipFile:
        pass
    return {
        "name": string(tab, 0), "description": string(tab, 1), "version": string(tab, 2),
        "author": string(tab, 4), "min_parser_version": string(tab, 7),
        "inputs": [tensor(t) for t in tables(sg[0], 2)] if sg else [],
        "outputs": [tensor(t) for t in tables(sg[0], 3)] if sg else [],
        "packed_files": files,
    }
