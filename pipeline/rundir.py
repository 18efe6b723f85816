"""A run directory: its effective config, its manifest and the places each stage writes to."""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path

from pipeline import __version__, augment, distributed
from pipeline.config import RunConfig, dump_config, load_config
from pipeline.data import Splits, load_splits
from pipeline.environment import environment, stage_tool_versions
from pipeline.errors import RunStateError
from pipeline.io import hash_json, sha256_file, write_text_atomic
from pipeline.manifest import ArtifactRecord, DataRecord, Manifest, Preprocessing

DATA_LOG = "logs/data.log"  # the image folder's skipped files and the data warnings


class RunDir:
    """Everything one run wrote; stages read the manifest and add to it."""

    def __init__(self, root: Path, config: RunConfig, manifest: Manifest) -> None:
        self.root = root
        self.config = config
        self.manifest = manifest

    @classmethod
    def create(cls, root: Path, config: RunConfig) -> "RunDir":
        """Start (or continue) a run at ``root`` with ``config``; earlier artifacts stay for reuse.

        The data is loaded before anything is written, so a bad data source leaves no run directory behind.
        """
        manifest_path = root / "manifest.json"
        previous = Manifest.load(manifest_path) if manifest_path.is_file() else None
        manifest = Manifest(
            edgepipe_version=__version__,
            config=config.model_dump(mode="json"),
            environment=environment(),
            artifacts=previous.artifacts if previous else {},
        )
        run = cls(root, config, manifest)
        _ = run.splits
        if distributed.is_main():  # write_text_atomic makes ``root``; one it cannot make is a RunStateError
            write_text_atomic(root / "config.yaml", dump_config(config))
        run.save()
        distributed.barrier()
        return run

    @classmethod
    def open(cls, root: Path) -> "RunDir":
        """Open an existing run (for the single-stage commands)."""
        if not (root / "manifest.json").is_file() or not (root / "config.yaml").is_file():
            raise RunStateError(
                f"{root} is not an edgepipe run directory (no manifest.json/config.yaml)",
                "create one with `edgepipe run --out DIR`",
            )
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

    def require(self, name: str) -> ArtifactRecord:
        record = self.manifest.artifacts.get(name)
        if record is None or not self.path(record.path).is_file():
            raise RunStateError(f"{self.root} has no {name} artifact", "run the stage that makes it first")
        return record

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
