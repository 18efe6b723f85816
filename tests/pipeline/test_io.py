"""File helpers: atomic writes, content hashes, stable cache keys."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipeline.io import atomic_path, hash_json, sha256_file, write_text_atomic


def test_atomic_path_success_and_failure(tmp_path: Path) -> None:
    """The target appears only when the block succeeds; a failure keeps the old file and no temp file."""
    target = tmp_path / "sub" / "file.txt"
    write_text_atomic(target, "first")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("second, half-written")
            raise RuntimeError("interrupted")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_atomic_temp_keeps_suffix(tmp_path: Path) -> None:
    """The temp path lies beside the target and keeps its suffix (converters pick formats by suffix)."""
    with atomic_path(tmp_path / "model.onnx") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".onnx" and tmp.name.startswith(".model.onnx.")
        tmp.write_bytes(b"x")
    assert (tmp_path / "model.onnx").read_bytes() == b"x"


def test_atomic_write_respects_umask(tmp_path: Path) -> None:
    """Written files get the usual permissions for the umask (0644 under umask 022)."""
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.md", "# report")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644


def test_sha256_file(tmp_path: Path) -> None:
    """sha256_file equals hashlib over the whole content (larger than one read block)."""
    data = os.urandom(3 * (1 << 20) + 17)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_hash_json_stable_and_sensitive() -> None:
    """Key order does not change the hash; any value change does."""
    a = hash_json({"stage": "export", "config": {"opset": 18, "exporter": "dynamo"}, "parents": ["x"]})
    b = hash_json({"parents": ["x"], "config": {"exporter": "dynamo", "opset": 18}, "stage": "export"})
    c = hash_json({"stage": "export", "config": {"opset": 17, "exporter": "dynamo"}, "parents": ["x"]})
    assert a == b != c
    assert len(a) == 16
