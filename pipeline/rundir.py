"""A run directory: its effective config, its manifest and the places each stage writes to."""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path

from pipeline import __version__
from pipeline.config import RunConfig, dump_config
from pipeline.config_load import load_config
from pipeline.converter_log import attach_run_log
from pipeline.data import augment
from pipeline.data.splits import Splits, load_splits
from pipeline.environment import environment, stage_tool_versions
from pipeline.errors import RunStateError
from pipeline.io import cannot_write, hash_json, sha256_file, write_text_atomic
from pipeline.manifest import (
    PRUNED_STUDENT,
    QAT_STUDENT,
    QAT_SUFFIX,
    ArtifactRecord,
    DataRecord,
    Manifest,
    Preprocessing,
    is_baseline,
)
from pipeline.run_lock import lock_run
from pipeline.training import distributed

DATA_LOG = "logs/data.log"  # the image folder's skipped files and the data warnings


def _hold_writer_lock(root: Path, make: bool) -> None:
    """Rank 0 takes the writer lock of ``root`` (made first when ``make``; skipped while it does not exist); every
    rank then raises rank 0's refusal, so no rank waits at a barrier for one that has left (a collective: all ranks
    call it).

    Raises:
        RunStateError: another process writes ``root``, or ``root`` cannot be made.
    """
    refusal = None
    if distributed.is_main() and (make or root.is_dir()):
        try:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise cannot_write(root, e) from e
            lock_run(root)
            attach_run_log(root)  # the command's spooled output joins RUN/logs/run.log now that it is ours
        except RunStateError as e:
            refusal = (str(e), e.hint)
    refusal = distributed.from_main(refusal)
    if refusal is not None:
        raise RunStateError(*refusal)


class RunDir:
    """Everything one run wrote; stages read the manifest and add to it."""

    def __init__(self, root: Path, config: RunConfig, manifest: Manifest) -> None:
        self.root = root
        self.config = config
        self.manifest = manifest

    @classmethod
    def create(cls, root: Path, config: RunConfig) -> "RunDir":
        """Start (or continue) a run at ``root`` with ``config``; earlier artifacts stay for reuse.

        The data is loaded before anything is written, so a bad data source leaves no run directory behind. The
        process holds the run's writer lock from before it reads what an earlier run left (see :func:`lock_run`).
        """
        _hold_writer_lock(root, make=False)
        manifest_path = root / "manifest.json"
        previous = Manifest.load(manifest_path) if manifest_path.is_file() else None
        manifest = Manifest(
            edgepipe_version=__version__,
            config=config.model_dump(mode="json"),
            environment=environment(),
            artifacts=previous.artifacts if previous else {},
            shipped_student=previous.shipped_student if previous else None,
        )
        run = cls(root, config, manifest)
        _ = run.splits
        _hold_writer_lock(root, make=True)
        if distributed.is_main():
            write_text_atomic(root / "config.yaml", dump_config(config))
        run.save()
        distributed.barrier()
        return run

    @classmethod
    def open(cls, root: Path) -> "RunDir":
        """Open an existing run (for the single-stage commands), holding its writer lock (see :func:`lock_run`)."""
        if not (root / "manifest.json").is_file() or not (root / "config.yaml").is_file():
            raise RunStateError(
                f"{root} is not an edgepipe run directory (no manifest.json/config.yaml)",
                "create one with `edgepipe run --out DIR`",
            )
        _hold_writer_lock(root, make=False)
        return cls(root, load_config(root / "config.yaml"), Manifest.load(root / "manifest.json"))

    @cached_property
    def splits(self) -> Splits:
        """The configured data, split with the run's seed (recorded in the manifest on first load)."""
        splits = load_splits(self.config.data, self.config.seed)
        channels, height, width = splits.input_shape
        data = self.config.data
        preprocessing = Preprocessing(
            mean=splits.mean,
            std=splits.std,
            channels=channels,
            height=height,
            width=width,
            channel_order=data.channel_order if channels == 3 else splits.channel_order,
            resize=list(splits.resize) if splits.resize else None,
            resize_method="pillow-bilinear" if splits.resize else None,
            resize_mode=data.resize,
            crop_ratio=data.crop_ratio if data.resize == "center-crop" else None,
            exif_transpose=True,
            training_only=augment.describe(data.augment),
            stats_from=splits.stats_from,
            stats_samples=splits.stats_samples,
        )
        self.manifest.data = DataRecord(
            source=self.config.data.source,
            source_layout=splits.layout,
            classes=splits.classes,
            train=len(splits.train),
            val=len(splits.val),
            test=len(splits.test),
            seed=self.config.seed,
            preprocessing=preprocessing,
            counts=splits.counts,
            skipped_files=len(splits.skipped),
            notes=list(splits.notes),
        )
        self._log_data(splits)
        return splits

    def _log_data(self, splits: Splits) -> None:
        """Write DATA_LOG (files skipped, data warnings) and say the warnings on stderr (rank 0 only)."""
        if not distributed.is_main() or not (
            splits.skipped or splits.notes or splits.duplicates or self.path(DATA_LOG).is_file()
        ):
            return
        lines = [f"warning: {note}" for note in splits.notes]
        if splits.skipped:
            lines += [f"skipped {len(splits.skipped)} file(s) that are not images:", *splits.skipped]
        if splits.duplicates:
            lines += [f"skipped {len(splits.duplicates)} file(s) listed already:", *splits.duplicates]
        write_text_atomic(self.path(DATA_LOG), "\n".join(lines) + "\n")
        for note in splits.notes:
            print(f"edgepipe: warning: {note}", file=sys.stderr)

    @property
    def preprocessing(self) -> Preprocessing:
        if self.manifest.data is None:
            _ = self.splits  # loading the splits records the data and its preprocessing
        return self.manifest.data.preprocessing

    def path(self, relative: str) -> Path:
        return self.root / relative

    def artifact_id(self, stage: str, config_part: object, parents: list[str]) -> str:
        """Cache key of a stage output: its stage, the config it depends on, its parents (id and recorded sha256: a
        parent redone to other bytes, e.g. by ``--force``, rebuilds its children; redone to the same bytes, it does
        not) and the versions of the tools that shape it (``environment.STAGE_TOOLS``: an upgrade rebuilds)."""
        contents = {record.id: record.sha256 for record in self.manifest.artifacts.values()}
        return hash_json(
            {
                "stage": stage,
                "config": config_part,
                "parents": [[parent, contents.get(parent)] for parent in parents],
                "edgepipe": __version__,
                "tools": stage_tool_versions(stage),
            }
        )

    def shipped_student(self) -> str:
        """The student every export is built from, as the stage that decided it recorded (``manifest.shipped_student``;
        a manifest from before that field, of a run that does not prune: ``student``).

        Raises:
            RunStateError: the run prunes and its prune stage has not decided yet (the hint says how to run it).
        """
        name = self.manifest.shipped_student
        if name is None and self.config.prune is None:
            return "student"
        if name is None:
            missing = f"{self.root} has a prune: section but no pruned student"
            raise RunStateError(missing, self.how_to_make(PRUNED_STUDENT))
        return name

    def has(self, name: str) -> bool:
        """Whether artifact ``name`` is recorded and its file is there."""
        record = self.manifest.artifacts.get(name)
        return record is not None and self.path(record.path).is_file()

    def require(self, name: str) -> ArtifactRecord:
        """The record of artifact ``name``; a RunStateError whose hint says how to make it when it is missing."""
        if not self.has(name):
            raise RunStateError(f"{self.root} has no {name} artifact", self.how_to_make(name))
        return self.manifest.artifacts[name]

    def how_to_make(self, name: str) -> str:
        """The hint for a missing artifact ``name``: the commands that make it, in order, the first one runnable in
        this run as it is, e.g. "run `edgepipe distill RUN`, then `edgepipe export RUN --target onnx-int8`"."""
        commands = dict.fromkeys(self._commands_for(name))
        return "run " + ", then ".join(f"`{command}`" for command in commands)

    def _commands_for(self, name: str) -> list[str]:
        command, needs = self._producer(name)
        return [*(c for need in needs if not self.has(need) for c in self._commands_for(need)), command]

    def _producer(self, name: str) -> tuple[str, list[str]]:
        """The command that makes artifact ``name`` and the artifacts it needs that another command makes."""
        if name in ("teacher", "student"):
            return f"edgepipe distill {self.root}", []
        if is_baseline(name):
            return f"edgepipe distill {self.root} --baseline", []
        if name == PRUNED_STUDENT:
            return f"edgepipe prune {self.root}", ["teacher", "student"]
        shipped = ["student"] + ([PRUNED_STUDENT] if self.config.prune is not None else [])
        if name in ("calibration", QAT_STUDENT):  # the QAT-KD student: an int8 target's fallback (quantize)
            return f"edgepipe quantize {self.root}", ["teacher", *shipped]
        return f"edgepipe export {self.root} --target {name.removesuffix(QAT_SUFFIX)}", shipped

    def record(
        self, name: str, stage: str, artifact_id: str, path: Path, parent: str | None = None, **fields
    ) -> ArtifactRecord:
        """Add a freshly written file to the manifest and save it."""
        record = ArtifactRecord(
            name=name,
            id=artifact_id,
            stage=stage,
            parent=parent,
            path=str(path.relative_to(self.root)),
            bytes=path.stat().st_size,
            sha256=sha256_file(path),
            **fields,
        )
        self.manifest.artifacts[name] = record
        self.save()
        return record

    def save(self) -> None:
        """Write the manifest (rank 0 only under torchrun)."""
        if distributed.is_main():
            self.manifest.save(self.root / "manifest.json")
