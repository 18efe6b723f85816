"""Image folders as their owners make them: every extension Pillow opens, files that are not images skipped and
listed, symbolic links followed (without loops), per-class counts, and classes too small for every split."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig
from pipeline.config_load import parse_config
from pipeline.data.splits import image_suffixes, load_splits, read_image_folder
from pipeline.errors import DataError
from pipeline.manifest import Manifest
from pipeline.report.markdown import render_report
from pipeline.rundir import DATA_LOG, RunDir


def write(path: Path, seed: int, fmt: str | None = None) -> Path:
    """A 6×5 gray image saved in the format ``fmt`` (default: from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def folder(root: Path, per_class: dict[str, int]) -> Path:
    for name, count in per_class.items():
        for i in range(count):
            write(root / name / f"{i:02d}.png", 10 * len(name) + i)
    return root


def run_dir(tmp_path: Path, data: dict) -> RunDir:
    config = parse_config({"data": data})
    return RunDir(tmp_path / "run", config, Manifest(edgepipe_version="test", config=config.model_dump(mode="json")))


def test_pillow_extensions() -> None:
    """Every extension Pillow decodes counts, in any case; formats Pillow only writes or only identifies do not."""
    suffixes = image_suffixes()
    assert {".jfif", ".jpg", ".jpe", ".png", ".webp", ".tif", ".bmp", ".ppm", ".tga"} <= suffixes
    assert not {".pdf", ".h5", ".mpg"} & suffixes


def test_jfif_and_upper_case_counted_other_files_skipped_and_listed(tmp_path: Path) -> None:
    """.jfif and .JPG files are images; a .txt, a .csv and a broken link are skipped, counted in the manifest and
    listed in logs/data.log; the report shows per-class counts."""
    root = folder(tmp_path / "data", {"cat": 4, "dog": 4})
    write(root / "cat" / "x.jfif", 1, "JPEG")
    write(root / "dog" / "y.JPG", 2, "JPEG")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "labels.csv").write_text("a,b")
    os.symlink(root / "nowhere.png", root / "dog" / "dangling.png")
    source = read_image_folder(root)
    assert (source.train.y == 0).sum() == 5 and (source.train.y == 1).sum() == 5
    assert sorted(Path(p).name for p in source.skipped) == ["dangling.png", "labels.csv", "notes.txt"]
    run = run_dir(tmp_path, {"source": str(root)})
    _ = run.splits  # loading records the data
    record = run.manifest.data
    assert record.skipped_files == 3
    assert set(record.counts) == {"train", "val", "test"}
    assert sum(sum(c.values()) for c in record.counts.values()) == 10
    assert record.counts["test"] == {"cat": 1, "dog": 1}
    log = run.path(DATA_LOG).read_text()
    assert "skipped 3 file(s)" in log and "notes.txt" in log and "dangling.png" in log
    report = render_report(run.manifest)
    assert "| class | train | val | test |" in report and "| `cat` |" in report and "3 file(s)" in report


def test_symlinks_followed_without_loops(tmp_path: Path) -> None:
    """A linked sub-folder and a linked file are read like real ones; a link back up the tree is walked once."""
    root = folder(tmp_path / "data", {"a": 3, "b": 3})
    elsewhere = folder(tmp_path / "elsewhere", {"more": 2})
    os.symlink(elsewhere / "more", root / "a" / "linked")
    os.symlink(write(tmp_path / "single.png", 7), root / "b" / "single.png")
    os.symlink(root / "a", root / "a" / "loop")
    source = read_image_folder(root)
    assert (source.train.y == 0).sum() == 3 + 2 and (source.train.y == 1).sum() == 3 + 1
    assert not source.skipped


def test_linked_class_folder(tmp_path: Path) -> None:
    """A class folder that is a link to a folder elsewhere is a class like any other."""
    root = folder(tmp_path / "data", {"a": 3})
    os.symlink(folder(tmp_path / "other", {"b": 3}) / "b", root / "b")
    assert read_image_folder(root).classes == ["a", "b"]


@pytest.mark.parametrize("count", [1, 2])
def test_small_class_is_an_error_naming_it(tmp_path: Path, count: int) -> None:
    """A class too small for train, val and test: one line naming the class and its counts, with the option."""
    root = folder(tmp_path / "data", {"big": 10, "rare": count})
    with pytest.raises(DataError) as caught:
        load_splits(DataConfig(source=str(root)), seed=0)
    line = caught.value.one_line()
    assert f"'rare' has {count} image(s)" in line and "train 1" in line and "data.small_classes: warn" in line
    assert "'big'" not in line and "\n" not in line


def test_small_class_warn_keeps_it_for_training(tmp_path: Path) -> None:
    """data.small_classes: warn: the class keeps an image for training; the warning is in the manifest, the log
    and the report."""
    root = folder(tmp_path / "data", {"big": 10, "rare": 1})
    run = run_dir(tmp_path, {"source": str(root), "small_classes": "warn"})
    assert (run.splits.train.y == 1).sum() == 1  # loading records the data
    record = run.manifest.data
    assert record.counts["train"]["rare"] == 1 and record.counts["test"]["rare"] == 0
    assert len(record.notes) == 1 and "'rare' has 1 image(s)" in record.notes[0]
    assert "warning: class(es) too small" in run.path(DATA_LOG).read_text()
    assert "**0**" in render_report(run.manifest)


def test_own_test_folder_needs_two_training_images(tmp_path: Path) -> None:
    """With train/ and test/ folders a class needs 2 images in train/ (train and val); the hint says so."""
    folder(tmp_path / "data" / "train", {"a": 5, "b": 1})
    folder(tmp_path / "data" / "test", {"a": 2, "b": 2})
    with pytest.raises(DataError) as caught:
        load_splits(DataConfig(source=str(tmp_path / "data")), seed=0)
    assert "'b' has 3 image(s) (train 1, val 0, test 2)" in str(caught.value)
    assert "at least 2 images" in caught.value.hint


def test_links_to_other_classes_or_the_root_not_followed_and_noted(tmp_path: Path, capsys) -> None:
    """A link to the class's own folder is a quiet loop; a link to the data root or another class folder is not
    walked, a folder linked from two classes is listed once (the first class), a file met twice is listed once;
    each is noted in the manifest, the log and on stderr."""
    root = folder(tmp_path / "data", {"cat": 3, "dog": 3, "fish": 3, "frog": 3, "owl": 3})
    extra = folder(tmp_path / "outside", {"extra": 10}) / "extra"
    os.symlink(".", root / "cat" / "self")
    os.symlink(root.resolve(), root / "dog" / "root")
    os.symlink(root / "cat", root / "dog" / "kitty")
    os.symlink(extra, root / "fish" / "more")
    os.symlink(extra, root / "frog" / "more2")
    os.symlink(root / "fish" / "00.png", root / "owl" / "zz.png")
    source = read_image_folder(root)
    assert np.bincount(source.train.y).tolist() == [3, 3, 13, 3, 3]
    paths = [os.path.realpath(p) for p in source.train.x.paths]
    assert len(paths) == len(set(paths))  # no file carries two labels
    run = run_dir(tmp_path, {"source": str(root)})
    _ = run.splits  # loading records the data
    notes = run.manifest.data.notes
    assert any("dog/root leads to" in n and "which is the data root; not followed" in n for n in notes)
    assert any("dog/kitty leads to" in n and "which is the class folder" in n for n in notes)
    assert any("frog/more2 leads to" in n and "already listed as" in n and "fish/more" in n for n in notes)
    assert any("1 file(s) under" in n and "owl/zz.png" in n for n in notes)
    assert not any("self" in n for n in notes)
    log = run.path(DATA_LOG).read_text()
    assert "not followed" in log and "skipped 1 file(s) listed already:" in log and "not images" not in log
    assert capsys.readouterr().err.count("edgepipe: warning:") == len(notes) == 4


def test_link_under_train_into_test_not_followed(tmp_path: Path) -> None:
    """train/ and test/ folders: a link under train/ into a test class folder is not walked (no test image trains)."""
    folder(tmp_path / "data" / "train", {"a": 4, "b": 4})
    folder(tmp_path / "data" / "test", {"a": 2, "b": 2})
    os.symlink(tmp_path / "data" / "test" / "a", tmp_path / "data" / "train" / "a" / "peek")
    source = read_image_folder(tmp_path / "data")
    assert len(source.train) == 8 and len(source.test) == 4
    assert len(source.notes) == 1 and "train/a/peek leads to" in source.notes[0]


def test_two_class_folders_one_real_folder(tmp_path: Path) -> None:
    """Two class folders that are one real folder (a linked class): one line naming both."""
    root = folder(tmp_path / "data", {"a": 3, "b": 3})
    os.symlink(root / "a", root / "c")
    with pytest.raises(DataError, match="class folders .*a and .*c are the same folder"):
        read_image_folder(root)
