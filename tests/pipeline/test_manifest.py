"""The manifest: JSON round trip, strict schema, and reuse only of intact files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import RunStateError
from pipeline.manifest import SCHEMA_PATH, SCHEMA_VERSION, Manifest, manifest_json_schema


def test_load_save_round_trip(finished_run: Path, tmp_path: Path) -> None:
    """load → save → load gives an equal manifest and the same JSON."""
    manifest = Manifest.load(finished_run / "manifest.json")
    copy_path = tmp_path / "manifest.json"
    manifest.save(copy_path)
    again = Manifest.load(copy_path)
    assert again == manifest
    assert json.loads(copy_path.read_text()) == json.loads((finished_run / "manifest.json").read_text())
    assert again.schema_version == SCHEMA_VERSION
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_minimal_manifest_round_trip(tmp_path: Path) -> None:
    """A fresh manifest with only its required fields survives a round trip."""
    manifest = Manifest(edgepipe_version="0.0", config={"seed": 1})
    manifest.save(tmp_path / "m.json")
    assert Manifest.load(tmp_path / "m.json") == manifest


def test_schema_rejects_unknown_fields(finished_run: Path, tmp_path: Path) -> None:
    """An unknown field in an artifact record is an error naming the file, not silently dropped."""
    raw = json.loads((finished_run / "manifest.json").read_text())
    raw["artifacts"]["student"]["colour"] = "blue"
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(RunStateError, match="not a readable edgepipe manifest") as caught:
        Manifest.load(path)
    assert str(path) in str(caught.value)
    assert "\n" not in caught.value.one_line()


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]"])
def test_corrupt_manifest_is_run_state_error(tmp_path: Path, text: str) -> None:
    """Empty, non-JSON and foreign manifests raise RunStateError with a hint."""
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(RunStateError) as caught:
        Manifest.load(path)
    assert caught.value.hint


def test_reusable_only_while_intact(run_copy: Path) -> None:
    """``reusable`` returns the record for the right id and an intact file, else None."""
    manifest = Manifest.load(run_copy / "manifest.json")
    record = manifest.artifacts["onnx-int8"]
    assert manifest.reusable("onnx-int8", record.id, run_copy) == record
    assert manifest.reusable("onnx-int8", "0" * 16, run_copy) is None
    assert manifest.reusable("no-such-artifact", record.id, run_copy) is None
    path = run_copy / record.path
    path.write_bytes(path.read_bytes() + b"\0")
    assert manifest.reusable("onnx-int8", record.id, run_copy) is None


def test_reusable_same_size_edit_and_deletion(run_copy: Path) -> None:
    """A same-size change is caught by the hash; a deleted file is not reusable."""
    manifest = Manifest.load(run_copy / "manifest.json")
    record = manifest.artifacts["tflite-int8"]
    path = run_copy / record.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert path.stat().st_size == record.bytes
    assert manifest.reusable("tflite-int8", record.id, run_copy) is None
    student = manifest.artifacts["student"]
    (run_copy / student.path).unlink()
    assert manifest.reusable("student", student.id, run_copy) is None


def test_published_schema_is_current() -> None:
    """The schema file shipped in the package is the Manifest model's schema (regenerate it when this fails:
    `python -c "import json; from pipeline.manifest import *; SCHEMA_PATH.write_text(json.dumps(
    manifest_json_schema(), indent=2, ensure_ascii=False) + '\\n')"`)."""
    assert json.loads(SCHEMA_PATH.read_text()) == manifest_json_schema()


def test_run_manifest_validates_against_published_schema(finished_run: Path) -> None:
    """An independent validator (jsonschema) accepts a real run's manifest and rejects a broken one."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text())
    document = json.loads((finished_run / "manifest.json").read_text())
    jsonschema.validate(document, schema)
    document["measurements"][0]["timings"][0]["latency"]["p50_ms"] = "fast"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


def test_schema_command_prints_the_file() -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0 and json.loads(result.stdout) == manifest_json_schema()
