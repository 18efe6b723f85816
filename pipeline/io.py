"""File helpers: atomic writes and content hashes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from pipeline.errors import RunStateError

# A write that fails for these reasons fails for the destination, whatever the block was doing.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A directory that cannot be written or a full disk is a RunStateError naming ``path``; nothing is left behind.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as e:
        raise cannot_write(path, e) from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with write_errors_name(path):
            yield tmp
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as e:
            raise cannot_write(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def write_errors_name(path: Path) -> Iterator[None]:
    """A full disk or read-only file system inside the block becomes a one-line error naming ``path``."""
    try:
        yield
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise cannot_write(path, e) from e
        raise


def cannot_write(path: Path, error: OSError) -> RunStateError:
    """The error for a write to ``path`` that failed with ``error`` (no space, read-only, no permission)."""
    reason = error.strerror or str(error)
    return RunStateError(f"cannot write {path}: {reason}", "free disk space or make the directory writable")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_json(value: object) -> str:
    """Stable short hash of a JSON-serialisable value (cache keys, artifact ids)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
