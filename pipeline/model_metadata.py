"""Key/value metadata inside model files: ONNX ``metadata_props`` and TFLite ``Model.metadata`` entries (the
``embed_metadata`` and ``read_metadata`` of their ``pipeline.formats`` entries).

TFLite entries are written without tflite_support: the file is unpacked with the flatbuffers object API of the
TFLite schema shipped in ai-edge-litert (``ai_edge_litert.schema_py_generated``), each entry becomes a buffer
plus a ``Metadata`` (name, buffer index) row, and the model is packed again. Operators, tensors and weights are
carried over unchanged, so inference is the same; entries already there (``min_runtime_version``,
``CONVERSION_METADATA``) are kept, and an entry of the same name is replaced.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ExportError

TFLITE_FILE_IDENTIFIER = b"TFL3"
EMBEDDED_KEY = "edgepipe"  # a released file's own bundle entry (JSON): how to feed it, what it measured
EMBEDDED_LABELS_KEY = "labels"  # a released file's class names, one per line


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` as a dict."""
    import onnx

    return {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}


def read_tflite_metadata(path: Path) -> dict[str, bytes]:
    """A TFLite file's metadata entries: name → the bytes of the buffer it points at."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    entries = {}
    for i in range(model.MetadataLength()):
        row = model.Metadata(i)
        entries[row.Name().decode()] = model.Buffers(row.Buffer()).DataAsNumpy().tobytes()
    return entries


def embed_onnx_metadata(source: Path, dest: Path, entries: dict[str, str]) -> None:
    """Write the ONNX file ``source`` to ``dest`` with ``entries`` in its ``metadata_props`` (same keys replaced)."""
    import onnx

    model = onnx.load(str(source))
    kept = [(prop.key, prop.value) for prop in model.metadata_props if prop.key not in entries]
    del model.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dest))


def embed_tflite_metadata(source: Path, dest: Path, entries: dict[str, str]) -> None:
    """Write the TFLite file ``source`` to ``dest`` with ``entries`` as metadata buffers (same names replaced).

    Raises:
        ExportError: the file keeps its weights outside the flatbuffer (the >2 GB layout)."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(source.read_bytes(), 0))
    if any(buffer.offset for buffer in model.buffers):
        raise ExportError(f"{source.name} keeps its weights outside the flatbuffer (>2 GB layout); not supported")
    model.metadata = model.metadata or []
    rows = {row.name.decode(): row for row in model.metadata}
    for name, text in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(text.encode(), np.uint8)
        if name in rows:
            model.buffers[rows[name].buffer] = buffer
            continue
        model.buffers.append(buffer)
        row = schema.MetadataT()
        row.name, row.buffer = name, len(model.buffers) - 1
        model.metadata.append(row)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    dest.write_bytes(builder.Output())
