"""Every target converted from one tiny inline module (Conv-BN-ReLU-pool twice, then Linear, on digits' 1×8×8),
through its real converter: no run directory, no pipeline, no shared full-run fixture.

The ``inline_exports`` fixture (tests/conftest.py) is an ``InlineExports``: ``inline_exports.get(name)`` converts
``name`` (and the targets it is converted from) once per session, as the export stage calls a target
(``targets.base.ExportInputs``), and returns what it wrote; ``run_file`` feeds a written file on its own runtime
(onnxruntime, LiteRT) directly, no edgepipe runner, and gives float logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from targets import TARGETS, ExportResult, Target

CALIBRATION_SIZE = 64
VALIDATION_SIZE = 200  # int8 targets score their choices on it: enough to tell a broken file, seconds to score
CHECK_SIZE = 128  # test images the written files are compared with torch on


def real_targets() -> list[str]:
    """The registered targets that ship with edgepipe (test-only toys registered by other tests left out)."""
    return [name for name in TARGETS.names() if TARGETS.get(name).__module__.startswith("targets.")]


def tiny_module(in_channels: int = 1, num_classes: int = 10):
    """Conv-BN-ReLU-MaxPool, Conv-BN-ReLU, global average pool, Linear: three weighted layers, ~1.5 k parameters."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def trained_tiny_module(x: np.ndarray, y: np.ndarray, epochs: int = 4):
    """``tiny_module`` trained a few epochs on (x, y) with a fixed seed (a second or two), in eval mode."""
    import torch

    torch.manual_seed(0)
    model = tiny_module(x.shape[1], int(y.max()) + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    order = np.random.default_rng(0)
    model.train()
    for _ in range(epochs):
        for batch in np.array_split(order.permutation(len(x)), max(1, len(x) // 64)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch]).backward()
            optimizer.step()
    return model.eval()


@dataclass
class Exported:
    """One target's file from the inline module, or the error its conversion raised."""

    target: Target
    path: Path
    result: ExportResult | None = None
    error: BaseException | None = None


class InlineExports:
    """Converts targets of the tiny module on demand, parents first, each once."""

    def __init__(self, root: Path, splits) -> None:
        from calibration.sampling import draw_calibration_set
        from pipeline.config_load import parse_config
        from pipeline.manifest import Preprocessing

        self.root = root
        self.splits = splits
        x_train = splits.normalize(splits.train.x)
        self.model = trained_tiny_module(x_train, splits.train.y)
        self.config = parse_config(
            {"seed": 0, "data": {"source": "digits"}, "calibration": {"size": CALIBRATION_SIZE}, "export": {}}
        )
        self.calibration = draw_calibration_set(splits, CALIBRATION_SIZE, seed=0)
        self.validation = (splits.normalize(splits.val.x[:VALIDATION_SIZE]), splits.val.y[:VALIDATION_SIZE])
        channels, height, width = splits.input_shape
        self.preprocessing = Preprocessing(
            mean=splits.mean, std=splits.std, channels=channels, height=height, width=width
        )
        self.check_x = splits.normalize(splits.test.x[:CHECK_SIZE])
        self.work_dir = root / "work"
        self.work_dir.mkdir(parents=True)
        self.exported: dict[str, Exported] = {}

    def torch_logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()

    def get(self, name: str) -> Exported:
        """``name``'s file (converting its parents first); a failed parent fails it too."""
        if name not in self.exported:
            self.exported[name] = self._export(name)
        return self.exported[name]

    def _export(self, name: str) -> Exported:
        from pipeline.io import sha256_file
        from targets import ExportInputs

        target = TARGETS.get(name)()
        exported = Exported(target, self.root / f"tiny-{name}{target.suffix}")
        parent_path, parent_sha256 = Path("-"), "-"
        if target.parent != "student":
            parent = self.get(target.parent)
            if parent.error is not None:
                exported.error = RuntimeError(f"its parent {target.parent} failed: {parent.error}")
                return exported
            parent_path, parent_sha256 = parent.path, sha256_file(parent.path)
        inputs = ExportInputs(
            parent_path=parent_path,
            parent_sha256=parent_sha256,
            output_path=exported.path,
            work_dir=self.work_dir,
            config=self.config,
            preprocessing=self.preprocessing,
            calibration=self.calibration if target.needs_calibration else None,
            validation=self.validation if target.needs_calibration else None,
            model=self.model if target.parent == "student" else None,
            log_path=self.root / "logs" / f"{name}.log",
        )
        try:
            exported.result = target.export(inputs)
        except Exception as e:  # noqa: BLE001 (the test of this target reports it; the others still convert)
            exported.error = e
        return exported


def run_file(exported: Exported, x_nchw: np.ndarray) -> np.ndarray:
    """Float logits of a written file on its own runtime for normalized NCHW ``x``: onnxruntime (CPU) or LiteRT,
    fed in the layout its input spec names; an int8 TFLite input is quantized and its output dequantized with the
    file's own scale and zero point."""
    if exported.target.format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x_nchw})[0]
    from ai_edge_litert.interpreter import Interpreter

    x = x_nchw.transpose(0, 2, 3, 1) if exported.result.inputs[0].layout == "NHWC" else x_nchw
    interpreter = Interpreter(model_path=str(exported.path), num_threads=1)
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(source["index"], list(x.shape))
    interpreter.allocate_tensors()
    if source["dtype"] == np.int8:
        scale, zero_point = source["quantization"]
        x = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    interpreter.set_tensor(source["index"], np.ascontiguousarray(x, dtype=source["dtype"]))
    interpreter.invoke()
    out = interpreter.get_tensor(sink["index"])
    if sink["dtype"] == np.int8:
        scale, zero_point = sink["quantization"]
        out = (out.astype(np.float32) - zero_point) * scale
    return out
