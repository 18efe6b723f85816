"""One-line converter failures: target, stage, the op that failed (ONNX node or TFLite op) and a hint for the case.

The converters' own text (an exception message, an MLIR dump, onnx2tf's trace log) names the op in several ways;
``failing_op`` reads them and, given the ONNX file, names the ONNX node(s) behind a TensorFlow/TFLite op.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ExportError

TFLITE_BUILTINS_URL = "https://ai.google.dev/edge/litert/models/ops_compatibility"
EXPORTERS = ("dynamo", "torchscript")
GELU_HINT = "use nn.GELU(approximate='tanh') (Erf is not a TFLite builtin)"

# TensorFlow op types whose ONNX op type is spelled differently (the rest match case-insensitively: Erf, Gather...)
_TF_TO_ONNX = {
    "SelectV2": "Where",
    "Select": "Where",
    "GatherV2": "Gather",
    "GatherNd": "GatherND",
    "ScatterNd": "ScatterND",
    "ResizeBilinear": "Resize",
    "ResizeNearestNeighbor": "Resize",
    "BatchMatMulV2": "MatMul",
    "Mean": "ReduceMean",
    "Sum": "ReduceSum",
    "Max": "ReduceMax",
    "MirrorPad": "Pad",
    "PadV2": "Pad",
}
_NODE_LISTED = 3  # ONNX nodes named in the message; more are counted


@dataclass(frozen=True)
class FailedOp:
    """The op a converter failed on: as the converter names it and, where found, the ONNX op type and nodes."""

    converter_op: str | None  # e.g. "tfl.select_v2", "tf.Erf", "aten::adaptive_avg_pool2d"
    onnx_type: str | None = None
    onnx_nodes: tuple[str, ...] = ()
    module: str | None = None  # the torch module of a torch.onnx failure: 'AdaptiveAvgPool2d 2' (class, attribute)

    def describe(self) -> str:
        """'op ONNX Where (node_a, node_b) as tfl.select_v2' or '' when nothing is known."""
        parts = []
        nodes = ", ".join(self.onnx_nodes[:_NODE_LISTED])
        more = len(self.onnx_nodes) - _NODE_LISTED
        nodes += f" and {more} more" if more > 0 else ""
        if self.onnx_type:
            parts.append(f"ONNX {self.onnx_type}" + (f" ({nodes})" if nodes else ""))
        elif nodes:
            parts.append(f"ONNX node {nodes}")
        if self.converter_op and _tf_type(self.converter_op).lower() != (self.onnx_type or "").lower():
            parts.append(("as " if parts else "") + self.converter_op)
        if self.module:
            parts.append(f"(module {self.module})")
        return "op " + " ".join(parts) if parts else ""


def _tf_type(tfl_or_tf: str) -> str:
    """TensorFlow op type from a converter name: 'tfl.select_v2' → 'SelectV2', 'tf.Erf' → 'Erf'."""
    name = tfl_or_tf.split(".", 1)[-1]
    return name if "_" not in name and name[:1].isupper() else "".join(p.capitalize() for p in name.split("_"))


def _onnx_nodes(onnx_path: Path | None) -> list[tuple[str, str]]:
    """(op_type, name) of every node of the ONNX file; [] when it cannot be read."""
    if onnx_path is None or not onnx_path.is_file():
        return []
    import onnx

    try:
        return [(n.op_type, n.name) for n in onnx.load(onnx_path, load_external_data=False).graph.node]
    except Exception:  # noqa: BLE001 (a diagnosis must never hide the failure it diagnoses)
        return []


def _torch_module(op: str, log_text: str) -> str | None:
    """'AdaptiveAvgPool2d 2' for ``aten::op``: the module (class and attribute path) whose scope the torchscript
    graph dump gives the op's node."""
    for line in log_text.splitlines():
        if f"{op}(" in line and "scope: " in line:
            scope = line.split("scope: ", 1)[1].split(" # ", 1)[0].strip().rsplit("/", 1)[-1]
            cls, _, attribute = scope.partition("::")
            return f"{cls.rsplit('.', 1)[-1]} {attribute}".strip()
    return None


def failing_op(message: str, log_text: str = "", onnx_path: Path | None = None) -> FailedOp | None:
    """The op a converter failed on, read from its exception ``message`` and its output ``log_text``; None when
    none is named.

    Reads onnx2tf's trace log (``onnx_op_name: X``), MLIR diagnostics (``'tf.Erf' op is neither a custom op nor a
    flex op``, ``failed to legalize operation 'tfl.select_v2'``) with their location (``fused["SelectV2:", ...]``),
    and torch.onnx messages (``operator adaptive_avg_pool2d``, ``aten::foo``; the module from the graph dump).
    """
    nodes = _onnx_nodes(onnx_path)
    named = re.findall(r"onnx_op_name: (\S+)", log_text)
    if named:
        by_name = {name: op_type for op_type, name in nodes}
        return FailedOp(None, by_name.get(named[-1]), (named[-1],))
    text = f"{message}\n{log_text}"
    mlir = re.search(r"'(tfl?\.\w+)' op is neither a custom op nor a flex op", text) or re.search(
        r"failed to legalize operation '(tfl?\.\w+)'", text
    )
    if mlir:
        converter_op = mlir.group(1)
        located = [op for op in re.findall(r'fused\["(\w+):"', text) if not op.endswith("PartitionedCall")]
        tf_type = located[0] if located else _tf_type(converter_op)
        onnx_type = _TF_TO_ONNX.get(tf_type, tf_type)
        matches = [(op_type, name) for op_type, name in nodes if op_type.lower() == onnx_type.lower()]
        if matches:
            return FailedOp(converter_op, matches[0][0], tuple(name for _, name in matches))
        return FailedOp(converter_op)
    torch_op = re.search(r"(?:operator |aten::|aten\.)(\w+)", message)
    if torch_op:
        op = f"aten::{torch_op.group(1)}"
        return FailedOp(op, module=_torch_module(op, log_text))
    return None


def other_exporter(exporter: str | None) -> str | None:
    """The torch.onnx exporter the run does not use (None when the run's is unknown)."""
    return next((e for e in EXPORTERS if e != exporter), None) if exporter in EXPORTERS else None


_DYNAMIC_BATCH = re.compile(r"got (?:batch|'batch') of type 'str'|\['batch', ")  # a symbolic dim reached a shape
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _user_frame(text: str) -> str | None:
    """``path:line`` of the last traceback frame in ``text`` outside installed packages (the user's model code)."""
    frames = [f"{path}:{line}" for path, line in _USER_FRAME.findall(text) if "-packages/" not in path]
    return frames[-1] if frames else None


def _first_line(text: str) -> str:
    """The first line of a converter message that says something: ANSI colours dropped; torch.export's banner
    replaced by its "Exception summary" (the exception class and message); MLIR diagnostics lose their location
    prefix (``...: error: loc(...): 'tf.Erf' op ...``) and their ``note:`` lines; torch.onnx's boilerplate is cut."""
    text = _ANSI.sub("", text)
    if "## Exception summary" in text:
        text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text.split("## Exception summary", 1)[1])
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        said = re.sub(r"^.*?\berror: ", "", line)
        said = re.sub(r"^loc\(.*\):\s+", "", said)
        said = re.sub(r"\s*(Please feel free|\[Caused by).*$", "", said)  # torch.onnx's boilerplate
        if said and not said.startswith(("loc(", "note:")) and ": note: " not in said:
            return said[:300]
    return lines[0][:300] if lines else "no message"


def _exit_message(error: SystemExit, log_text: str) -> str:
    """What a converter that called ``sys.exit`` said: its first ``ERROR:`` line in the log (onnx2tf exits after
    printing one), else its exit status."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", log_text)
    said = [line.split("ERROR:", 1)[1].strip() for line in plain.splitlines() if "ERROR:" in line]
    return next((line for line in said if line), f"exited with status {error.code}")


def converter_error(
    target: str,
    stage: str,
    error: BaseException | str,
    exporter: str | None,
    onnx_path: Path | None = None,
    log_path: Path | None = None,
    log_text: str = "",
) -> ExportError:
    """The one-line ``ExportError`` for a failed conversion: target, stage, op, first line, log; hint for the case.
    The error's whole text is appended to the log (the line keeps only its first sentence).

    Args:
        target: the target being built (``tflite-fp32``).
        stage: the converter that failed (``torch.onnx``, ``onnx2tf``, ``tflite-converter``).
        error: the converter's exception (or its message; a ``SystemExit`` is explained from the log).
        exporter: the run's ``export.exporter``; the hint suggests the other one (None: unknown, no suggestion).
        onnx_path: the ONNX file converted, to name the ONNX node behind a TensorFlow op.
        log_path: where the converter's whole output went (named in the message).
        log_text: that output (or its tail), searched for the op too.
    """
    message = _exit_message(error, log_text) if isinstance(error, SystemExit) else str(error)
    op = failing_op(message, log_text, onnx_path)
    is_erf = bool(re.search(r"\bErf\b", f"{message}\n{log_text}")) and (op is None or "erf" in op.describe().lower())
    other = other_exporter(exporter)
    switch = f"set export.exporter: {other}, or " if other else ""
    if is_erf:
        hint = GELU_HINT
    elif _DYNAMIC_BATCH.search(f"{message}\n{log_text}"):
        hint = (
            "onnx2tf cannot convert this op with a dynamic batch dimension (it needs static shapes here); replace the "
            "op, or leave the TFLite targets out of export.targets"
        )
    elif "data-dependent" in _ANSI.sub("", message):
        hint = "make forward() free of Python branches on tensor values (torch.export traces one path); use torch.where"
    elif stage == "torch.onnx":
        hint = f"{switch}replace that op in the model"
    else:
        hint = f"{switch}replace that op by one of the TFLite builtins ({TFLITE_BUILTINS_URL})"
    where = f" at {op.describe()}" if op and op.describe() else ""
    frame = _user_frame(_ANSI.sub("", f"{message}\n{log_text}"))
    where += f" (model code {frame})" if frame and not where else ""
    log = ""
    if log_path is not None:  # the message's whole text (an MLIR module dump, a graph) beside the converter's output
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as file:
            file.write(f"\n--- {target}: {stage} failed ({type(error).__name__}):\n{message}\n")
        log = f"; converter output in {log_path}"
    return ExportError(f"{target}: {stage} failed{where}: {_first_line(message)}{log}", hint)
