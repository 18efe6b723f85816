"""Two runs side by side: per artifact × runtime deltas (B − A) of accuracy, p50 latency and file size, and
the regressions of B beyond thresholds (what `edgepipe report A --compare B` prints and gates on)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import RunStateError
from pipeline.manifest import Manifest, Measurement


@dataclass(frozen=True)
class Thresholds:
    """How much worse run B may be than run A before the comparison fails."""

    max_accuracy_drop: float = 0.5  # points of test top-1
    max_latency_increase: float = 10.0  # percent of p50 latency at batch 1
    max_size_increase: float = 5.0  # percent of file bytes


@dataclass(frozen=True)
class RowDelta:
    """One artifact × runtime measured in both runs: A's and B's figures and their changes (B − A)."""

    artifact: str
    runtime: str
    accuracy_a: float
    accuracy_b: float
    p50_ms_a: float
    p50_ms_b: float
    bytes_a: int | None
    bytes_b: int | None

    @property
    def label(self) -> str:
        return f"{self.artifact} on {self.runtime}"

    @property
    def accuracy_points(self) -> float:
        """Test top-1 change in points, rounded like the manifest's accuracies (2 decimals)."""
        return round(self.accuracy_b - self.accuracy_a, 2)

    @property
    def p50_change_pct(self) -> float:
        return (self.p50_ms_b / self.p50_ms_a - 1) * 100

    @property
    def size_change_pct(self) -> float | None:
        """File size change in percent; None when either run has no record of the artifact."""
        if self.bytes_a is None or self.bytes_b is None:
            return None
        return (self.bytes_b / self.bytes_a - 1) * 100


@dataclass(frozen=True)
class Comparison:
    """Rows measured in both runs (in A's order), labels of rows measured in only one, and both machines."""

    rows: list[RowDelta]
    only_a: list[str]
    only_b: list[str]
    machine_a: str
    machine_b: str


@dataclass(frozen=True)
class Regression:
    """One figure of one row that got worse beyond its threshold."""

    row: str
    figure: str
    change: float
    limit: float
    unit: str

    def __str__(self) -> str:
        return f"{self.row}: {self.figure} {self.change:+.2f} {self.unit} (limit {self.limit:+.2f} {self.unit})"


def _key(m: Measurement) -> tuple[str, str]:
    return m.artifact, f"{m.runtime} ({m.provider})"


def _machine(manifest: Manifest) -> str:
    cpu = manifest.environment.get("cpu", {})
    return f"{cpu.get('model', '?')}, {cpu.get('cores', '?')} cores"


def compare_manifests(a: Manifest, b: Manifest) -> Comparison:
    """Match the two runs' measurements by artifact, runtime and provider and pair their figures."""
    in_a = {_key(m): m for m in a.measurements}
    in_b = {_key(m): m for m in b.measurements}
    rows = [
        RowDelta(
            artifact=artifact,
            runtime=runtime,
            accuracy_a=m.accuracy,
            accuracy_b=in_b[artifact, runtime].accuracy,
            p50_ms_a=m.latency.p50_ms,
            p50_ms_b=in_b[artifact, runtime].latency.p50_ms,
            bytes_a=m.file_bytes,
            bytes_b=in_b[artifact, runtime].file_bytes,
        )
        for (artifact, runtime), m in in_a.items()
        if (artifact, runtime) in in_b
    ]
    return Comparison(
        rows=rows,
        only_a=[f"{artifact} on {runtime}" for artifact, runtime in in_a if (artifact, runtime) not in in_b],
        only_b=[f"{artifact} on {runtime}" for artifact, runtime in in_b if (artifact, runtime) not in in_a],
        machine_a=_machine(a),
        machine_b=_machine(b),
    )


def regressions(comparison: Comparison, thresholds: Thresholds) -> list[Regression]:
    """Every figure of every row where B is worse than A by more than its threshold."""
    found = []
    for row in comparison.rows:
        if -row.accuracy_points > thresholds.max_accuracy_drop:
            found.append(Regression(row.label, "top-1", row.accuracy_points, -thresholds.max_accuracy_drop, "points"))
        if row.p50_change_pct > thresholds.max_latency_increase:
            found.append(Regression(row.label, "p50 latency", row.p50_change_pct, thresholds.max_latency_increase, "%"))
        size = row.size_change_pct
        if size is not None and size > thresholds.max_size_increase:
            found.append(Regression(row.label, "size", size, thresholds.max_size_increase, "%"))
    return found


def _size_cells(row: RowDelta) -> list[str]:
    if row.size_change_pct is None:
        return ["—", "—"]
    return [f"{row.bytes_a / 1024:.1f} → {row.bytes_b / 1024:.1f} KiB", f"{row.size_change_pct:+.1f} %"]


def _cells(row: RowDelta) -> list[str]:
    return [
        row.artifact,
        row.runtime,
        f"{row.accuracy_a:.2f} → {row.accuracy_b:.2f}",
        f"{row.accuracy_points:+.2f}",
        f"{row.p50_ms_a:.3f} → {row.p50_ms_b:.3f}",
        f"{row.p50_change_pct:+.1f} %",
        *_size_cells(row),
    ]


def render_comparison(comparison: Comparison) -> str:
    """Markdown: a table of the rows in both runs, then the rows in only one and a note if the machines differ."""
    lines = [
        "| artifact | runtime | top-1 % A → B | Δ points | p50 ms A → B | Δ p50 | size A → B | Δ size |",
        "|---|---|---|---|---|---|---|---|",
        *("| " + " | ".join(_cells(row)) + " |" for row in comparison.rows),
    ]
    if not comparison.rows:
        lines = ["No artifact × runtime was measured in both runs."]
    for side, labels in (("A", comparison.only_a), ("B", comparison.only_b)):
        if labels:
            lines += ["", f"Only in {side}: {', '.join(labels)}"]
    if comparison.machine_a != comparison.machine_b:
        lines += [
            "",
            f"Note: A ran on {comparison.machine_a}, B on {comparison.machine_b}; "
            "latency deltas compare machines as well as models.",
        ]
    return "\n".join(lines) + "\n"


def load_run_manifest(root: Path) -> Manifest:
    """The manifest of a run directory (its config is not needed to compare)."""
    path = root / "manifest.json"
    if not path.is_file():
        raise RunStateError(f"{root} has no manifest.json", "point at a run directory made by `edgepipe run`")
    return Manifest.load(path)
