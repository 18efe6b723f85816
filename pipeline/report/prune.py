"""The report's pruning section (report.md and report.html), read from the ``student-pruned`` record: every student
variant's parameters, MACs, sparsity, gzip'd size and p50, per-layer sparsity, the latency-budget search path (a
table and a figure) and the gzip'd size of every exported artifact."""

from __future__ import annotations

from typing import NamedTuple

from pipeline.manifest import PRUNED_STUDENT, ArtifactRecord, Manifest

PATH_HEADER = ["step", "channel ratio", "parameters", "MMAC / image", "val top-1 %", "p50 ms", "meets budget"]
LAYER_HEADER = ["layer", "student shape", "pruned shape", "student sparsity %", "pruned sparsity %"]
GZIP_HEADER = ["artifact", "student", "file", "gzip", "gzip / file"]


class PruneSection(NamedTuple):
    bullets: list[str]
    variants: tuple[list[str], list[list[str]]]
    layers: list[list[str]]
    path: list[list[str]]
    search_line: str | None
    gzip_rows: list[list[str]]


def _where(info: dict) -> str:
    m = info["measured_on"]
    return f"`{m['target']}` on {m['runtime']}, batch {m['batch']}, {m['threads']} thread(s)"


def _amount(info: dict) -> str:
    settings = info["settings"]
    if info["method"] == "magnitude":
        return f"magnitude, {settings['scope']} sparsity {settings['sparsity']:.0%}"
    if settings.get("latency_budget_ms") is not None:
        return f"structured to a {settings['latency_budget_ms']:g} ms budget, channel ratio {info['channel_ratio']:g}"
    if settings.get("macs_ratio") is not None:
        return f"structured to {settings['macs_ratio']:.0%} of the MACs, channel ratio {info['channel_ratio']:g}"
    return f"structured, channel ratio {info['channel_ratio']:g}"


def _search_line(info: dict) -> str | None:
    search = info.get("search")
    if not search:
        return None
    budget = search["budget_ms"]
    if search["met"]:
        chosen = search["path"][search["chosen_step"]]
        return (
            f"Latency budget {budget:g} ms **met** at step {chosen['step']} "
            f"(channel ratio {chosen['channel_ratio']:g}, p50 {chosen['p50_ms']:.4f} ms, "
            f"val top-1 {chosen['val_top1']:.2f} %): the most accurate candidate that meets it, fine-tuned again "
            "and shipped." + _remeasured(info, budget)
        )
    closest = min(search["path"], key=lambda e: e["p50_ms"])
    return (
        f"Latency budget {budget:g} ms **not met**: the closest the search got was p50 {closest['p50_ms']:.4f} ms at "
        f"channel ratio {closest['channel_ratio']:g} ({closest['p50_ms'] / budget:.2f}× the budget, "
        f"{closest['p50_ms'] - budget:+.4f} ms), with `prune.max_ratio` {search['path'][-1]['channel_ratio']:g} "
        "reached. The run ships the unpruned student; raise the budget, raise max_ratio, or pick a smaller "
        "architecture."
    )


def _remeasured(info: dict, budget: float) -> str:
    """What the final timing beside the unpruned student said, when it disagrees with the search."""
    p50 = info["variants"][-1]["p50_ms"]
    if p50 <= budget:
        return ""
    return (
        f" Timed again beside the unpruned student after the last fine-tune it took {p50:.4f} ms, over the budget: "
        "timings on a shared machine vary; check on the target device."
    )


def prune_summary_lines(record: ArtifactRecord) -> list[str]:
    """A few plain lines: what was pruned, the two students side by side, the budget's outcome, the dense note."""
    info = record.info
    lines = [f"{PRUNED_STUDENT}: {_amount(info)}; measured on {_where(info).replace('`', '')}"]
    for v in info["variants"]:
        lines.append(
            f"  {v['name']}: {v['params']:,} parameters, {v['macs'] / 1e6:.3f} MMAC, sparsity {v['sparsity']:.1f} %, "
            f"onnx-fp32 gzip {v['files']['onnx-fp32']['gzip_bytes']:,} bytes, val top-1 {v['val_top1']:.2f} %, "
            f"p50 {v['p50_ms']:.4f} ms"
        )
    search = _search_line(info)
    if search:
        lines.append(search.replace("**", ""))
    if info.get("note"):
        lines.append(info["note"])
    return lines


def _variant_table(info: dict) -> tuple[list[str], list[list[str]]]:
    target = info["measured_on"]["target"]
    header = ["student", "parameters", "MMAC / image", "sparsity %", "onnx-fp32", "onnx-fp32 gzip", f"{target} gzip"]
    header += [f"val top-1 % ({target})", "p50 ms"]
    rows = []
    for v in info["variants"]:
        fp32 = v["files"]["onnx-fp32"]
        rows.append(
            [
                f"`{v['name']}`",
                f"{v['params']:,}",
                f"{v['macs'] / 1e6:.3f}",
                f"{v['sparsity']:.1f}",
                f"{fp32['bytes'] / 1024:.1f} KiB",
                f"{fp32['gzip_bytes'] / 1024:.1f} KiB",
                f"{v['files'][target]['gzip_bytes'] / 1024:.1f} KiB",
                f"{v['val_top1']:.2f}",
                f"{v['p50_ms']:.4f}",
            ]
        )
    return header, rows


def _layer_rows(info: dict) -> list[list[str]]:
    before = {row["layer"]: row for row in info["variants"][0]["layers"]}
    rows = []
    for row in info["variants"][-1]["layers"]:
        old = before.get(row["layer"], {})
        rows.append(
            [
                f"`{row['layer']}`",
                "×".join(map(str, old.get("shape", []))) or "—",
                "×".join(map(str, row["shape"])),
                f"{old['sparsity']:.1f}" if old else "—",
                f"{row['sparsity']:.1f}",
            ]
        )
    return rows


def _path_rows(info: dict) -> list[list[str]]:
    search = info.get("search") or {"path": []}
    return [
        [
            str(e["step"]) + (" (kept)" if search.get("met") and e["step"] == search["chosen_step"] else ""),
            f"{e['channel_ratio']:g}",
            f"{e['params']:,}",
            f"{e['macs'] / 1e6:.3f}",
            f"{e['val_top1']:.2f}",
            f"{e['p50_ms']:.4f}",
            "yes" if e["meets_budget"] else "no",
        ]
        for e in search["path"]
    ]


def _gzip_rows(manifest: Manifest) -> list[list[str]]:
    rows = []
    for record in manifest.artifacts.values():
        gz = record.info.get("gzip_bytes")
        if record.stage == "export" and gz:
            source = record.info.get("source", "student")
            rows.append([record.name, f"`{source}`", f"{record.bytes / 1024:.1f} KiB", f"{gz / 1024:.1f} KiB"])
            rows[-1].append(f"{gz / record.bytes:.2f}")
    return rows


def prune_section(manifest: Manifest) -> PruneSection | None:
    """The section's content, or None when the run did not prune."""
    record = manifest.artifacts.get(PRUNED_STUDENT)
    if record is None or manifest.config.get("prune") is None:
        return None
    info = record.info
    shipped = "every target below is built from it" if info.get("shipped") else "NOT shipped: targets use `student`"
    bullets = [
        f"`{PRUNED_STUDENT}`: {_amount(info)}; KD fine-tune {info['finetune'].get('epochs_run', 0)} epoch(s) from the "
        f"teacher ({shipped}).",
        f"Variants measured on {_where(info)}; p50 is the median of rounds in which the variants take turns. "
        "gzip: the file compressed at level 9, what an app download sees.",
    ]
    if info.get("note"):
        bullets.append(f"**{info['note']}**")
    return PruneSection(
        bullets, _variant_table(info), _layer_rows(info), _path_rows(info), _search_line(info), _gzip_rows(manifest)
    )


def path_svg(manifest: Manifest) -> str | None:
    """Validation top-1 against p50 for each step of the latency-budget search, the budget as a vertical line."""
    record = manifest.artifacts.get(PRUNED_STUDENT)
    search = record.info.get("search") if record else None
    if not search:
        return None
    from matplotlib.figure import Figure

    from pipeline.report.plots import figure_svg  # the report's one way of inlining a figure

    path = search["path"]
    figure = Figure(figsize=(8.0, 4.0))
    ax = figure.subplots()
    ax.plot([e["p50_ms"] for e in path], [e["val_top1"] for e in path], "o-", color="C0", label="search path")
    for e in path:
        ax.annotate(
            f"{e['channel_ratio']:g}",
            (e["p50_ms"], e["val_top1"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.axvline(search["budget_ms"], color="C3", linestyle="--", label=f"budget {search['budget_ms']:g} ms")
    if search["met"]:
        chosen = path[search["chosen_step"]]
        ax.scatter(
            [chosen["p50_ms"]], [chosen["val_top1"]], s=120, facecolors="none", edgecolors="C2", zorder=3, label="kept"
        )
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel("validation top-1 (%)")
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=7)
    return figure_svg(figure, "plot-prune-path")


def md_lines(manifest: Manifest, md_table) -> list[str]:
    """The section as markdown lines (``md_table(header, rows)`` from report.py); empty without pruning."""
    section = prune_section(manifest)
    if section is None:
        return []
    lines = ["## Pruning", "", *(f"- {b}" for b in section.bullets), "", *md_table(*section.variants), ""]
    if section.search_line:
        lines += [section.search_line, "", *md_table(PATH_HEADER, section.path), ""]
    lines += ["Per-layer weight shape and sparsity:", "", *md_table(LAYER_HEADER, section.layers), ""]
    if section.gzip_rows:
        lines += ["Exported artifacts, gzip'd:", "", *md_table(GZIP_HEADER, section.gzip_rows), ""]
    return lines


def html_parts(manifest: Manifest, inline, table) -> list[str]:
    """The section as HTML fragments (``inline(text)`` and ``table(header, rows, css)`` from report_html.py)."""
    section = prune_section(manifest)
    if section is None:
        return []
    parts = ["<h2>Pruning</h2>", "<ul>" + "".join(f"<li>{inline(b)}</li>" for b in section.bullets) + "</ul>"]
    parts.append(table(*section.variants, "figures"))
    if section.search_line:
        parts += [f"<p>{inline(section.search_line)}</p>", table(PATH_HEADER, section.path, "figures")]
        svg = path_svg(manifest)
        caption = "Validation top-1 against p50 at each step of the search (labels: channel ratio removed)."
        parts.append(f'<figure id="figure-prune-path">{svg}<figcaption>{inline(caption)}</figcaption></figure>')
    parts += [
        f"<p>{inline('Per-layer weight shape and sparsity:')}</p>",
        table(LAYER_HEADER, section.layers, "figures"),
    ]
    if section.gzip_rows:
        parts += [f"<p>{inline('Exported artifacts, gzip’d:')}</p>", table(GZIP_HEADER, section.gzip_rows, "figures")]
    return parts
