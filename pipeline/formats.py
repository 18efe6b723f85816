"""The model file formats edgepipe writes and measures, as data: one :class:`Format` entry per format in ``FORMATS``.

Every place that used to ask "ONNX or TFLite?" asks the table instead: the runner of a file (export verification,
the prune measurement, bench, `edgepipe bench FILE`, teachers of another framework), its parameter/MAC counter, the
memory probe, the native runtime that ships (gate, release), the metadata a released file carries, the README code
that feeds it, the tools its runtime needs, and how plots mark it. Adding a format is one entry here (or
``FORMATS.register`` from elsewhere) plus its target files; a ``Target.format`` names an entry.

Heavy libraries (onnx, onnxruntime, ai-edge-litert, tensorflow) are imported inside the
entries' callables only, so importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from pipeline.errors import ModelError
from pipeline.manifest import TensorSpec
from pipeline.registry import Registry

if TYPE_CHECKING:
    from pipeline.measure.model_profile import ModelProfile
    from pipeline.measure.runtimes import Runner

# (path, input specs, output specs, threads (None: every usable core), provider) → a runner fed float NCHW batches
RunnerFactory = Callable[[Path, list[TensorSpec], list[TensorSpec], "int | None", str], "Runner"]
Specs = tuple[list[TensorSpec], list[TensorSpec]]


@dataclass(frozen=True)
class Format:
    """One model file format and everything edgepipe does with such a file.

    Attributes:
        name: the key of ``FORMATS``, ``Target.format`` and an export record's ``info["format"]`` ("onnx").
        label: the format in words ("ONNX"): messages, the release README, a teacher file's recorded interface.
        suffixes: file suffixes of the format (".onnx"); the first is the one targets write.
        runtime: ``Measurement.runtime`` of a row on the format's own runtime ("onnxruntime"): what the accuracy
            gate checks and a release ships with; also a teacher file's recorded runtime.
        runtime_label: the runtime and its CPU backend in words ("onnxruntime CPU", the prune stage's record).
        layout: the input layout (NCHW/NHWC) the runner feeds the file without a transpose of its own; a file of
            another layout gets no memory probe.
        layouts: input layouts a runner of the format can feed (ONNX: NHWC too, transposed before the call).
        quantized_input: the runner quantizes an integer input with its spec's scale and zero point; otherwise
            only float32 inputs are fed.
        runner: builds a runner: ``(path, inputs, outputs, threads, provider) -> Runner`` fed float NCHW batches
            (laid out and quantized as ``inputs[0]`` says), giving float logits.
        cpu_provider: the provider of the CPU runner (export verification, prune measurement, `edgepipe bench
            FILE`, teachers); the runner reports its own provider name.
        describe: ``path -> (input specs, output specs)`` as read from the file (layouts may still be unknown).
        profile: ``path -> ModelProfile`` (parameters, MACs per image); None: not counted.
        probe_import: the module a fresh memory-probe process imports as its runtime baseline before it loads the
            file (the probe's kind is ``name``); None: no memory probe for the format.
        embed_metadata: ``(source, dest, {key: text})``: ``source`` written to ``dest`` with the entries added;
            None: a release cannot carry its entry in the file.
        read_metadata: ``path -> {key: str or bytes}``, the entries a file carries; None: none are read.
        metadata_where: where the entries sit in the file, in words, for the release README.
        readme_heading: the release README's heading above ``feeding_snippet``.
        feeding_snippet: Python code (after the README's shared ``PREPARE`` code: ``entry``, ``inp``,
            ``load_pixels``, ``model_input``, ``logits``) that runs a bundled file and names its classes.
        tools: the tools its runtime and readers need, the runtime's own first: keys of
            ``pipeline.environment.TOOL_DISTRIBUTIONS``, or a distribution's own name; every manifest records
            their installed versions.
        marker: the plots' marker of rows on ``runtime`` (matplotlib marker code).
        providers: the execution providers bench measures a file on, one row each, labelled "<runtime>
            <provider>"; None: ``cpu_provider`` only, labelled ``runtime``.
        absent_providers: ``() -> {provider: why}`` for providers of the runtime this machine lacks (bench records
            each as a skipped row ``<name>-*``); None: nothing to say.
        cross_check: the name of a conversion bench also measures each file through (a key of
            ``pipeline.stages.bench.CROSS_CHECKS``, e.g. "tf2onnx"); None: none.
    """

    name: str
    label: str
    suffixes: tuple[str, ...]
    runtime: str
    runtime_label: str
    layout: str
    layouts: tuple[str, ...]
    quantized_input: bool
    runner: RunnerFactory
    cpu_provider: str
    describe: Callable[[Path], Specs]
    profile: Callable[[Path], ModelProfile] | None
    probe_import: str | None
    embed_metadata: Callable[[Path, Path, dict[str, str]], None] | None
    read_metadata: Callable[[Path], Mapping[str, str | bytes]] | None
    metadata_where: str
    readme_heading: str
    feeding_snippet: str
    tools: tuple[str, ...]
    marker: str = "D"
    providers: Callable[[], list[str]] | None = None
    absent_providers: Callable[[], dict[str, str]] | None = None
    cross_check: str | None = None

    def cpu_runner(self, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], threads: int | None):
        """A runner of the file on the CPU (``cpu_provider``)."""
        return self.runner(path, inputs, outputs, threads, self.cpu_provider)

    def bench_providers(self) -> list[str]:
        """The providers bench measures the format's files on (``providers``, else the CPU one)."""
        return self.providers() if self.providers else [self.cpu_provider]

    def plan_runtime(self, provider: str) -> str:
        """The bench plan's runtime label on ``provider``: "onnxruntime CPUExecutionProvider", "tflite"."""
        return f"{self.runtime} {provider}" if self.providers else self.runtime


FORMATS: Registry[Format] = Registry("model format")


def register_format(fmt: Format) -> Format:
    """Add ``fmt`` to ``FORMATS`` under its name (a duplicate name raises ValueError); returns it."""
    return FORMATS.register(fmt.name)(fmt)


def all_formats() -> list[Format]:
    """Every registered format, in registration order (onnx first)."""
    return [FORMATS.get(name) for name in FORMATS]


def format_for_suffix(suffix: str) -> Format | None:
    """The format whose files end in ``suffix`` (".onnx"), or None."""
    return next((fmt for fmt in all_formats() if suffix in fmt.suffixes), None)


def format_labelled(label: str) -> Format | None:
    """The format of ``label`` ("ONNX", a teacher interface's spelling), or None (Keras, SavedModel)."""
    return next((fmt for fmt in all_formats() if fmt.label == label), None)


def format_of(path: Path) -> Format:
    """The format of the model file ``path``, by its suffix.

    Raises:
        ModelError: ``path`` is not a file, or its suffix is none of the registered formats' (the message lists
            them)."""
    suffixes = [suffix for fmt in all_formats() for suffix in fmt.suffixes]
    hint = f"pass a model file ending in {' or '.join(suffixes)}"
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file", hint)
    fmt = format_for_suffix(path.suffix)
    if fmt is None:
        valid = ", ".join(f"{suffix} ({f.label})" for f in all_formats() for suffix in f.suffixes)
        raise ModelError(f"{path}: unknown model format {path.suffix!r}; valid: {valid}", hint)
    return fmt


def runtime_format(runtime: str) -> Format | None:
    """The format whose native runtime is ``runtime`` (a ``Measurement.runtime``), or None."""
    return next((fmt for fmt in all_formats() if fmt.runtime == runtime), None)


# --- ONNX -------------------------------------------------------------------------------------------------------


def _onnx_runner(path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], threads: int | None, provider: str):
    """onnxruntime on ``provider``, fed float input as given (NCHW), transposed first for an NHWC file."""
    from pipeline.measure.runtimes import fed, onnxruntime_runner, to_nhwc

    runner = onnxruntime_runner(path, provider, threads)
    return fed(runner, to_nhwc) if inputs and inputs[0].layout == "NHWC" else runner


def _onnx_describe(path: Path) -> Specs:
    from pipeline.measure.file_specs import onnx_specs

    return onnx_specs(path)


def _onnx_profile(path: Path) -> ModelProfile:
    from pipeline.measure.model_profile import onnx_profile

    return onnx_profile(path)


def _onnx_embed(source: Path, dest: Path, entries: dict[str, str]) -> None:
    from pipeline.model_metadata import embed_onnx_metadata

    embed_onnx_metadata(source, dest, entries)


def _onnx_read(path: Path) -> dict[str, str]:
    from pipeline.model_metadata import read_onnx_metadata

    return read_onnx_metadata(path)


def _onnx_providers() -> list[str]:
    from pipeline.measure.runtimes import onnxruntime_providers

    return onnxruntime_providers()


def _onnx_absent_providers() -> dict[str, str]:
    if "CUDAExecutionProvider" in _onnx_providers():
        return {}
    return {
        "CUDAExecutionProvider": "the installed onnxruntime has no CUDA provider (install onnxruntime-gpu on a GPU "
        "machine)"
    }


ONNXRUNTIME_SNIPPET = """\
import onnxruntime as ort

pixels = np.stack([load_pixels(path) for path in paths])  # paths: your image files
session = ort.InferenceSession(entry["file"], providers=["CPUExecutionProvider"])
scores = logits(session.run(None, {inp["name"]: model_input(pixels)})[0])
classes = [bundle["labels"][i] for i in scores.argmax(1)]
"""

ONNX = register_format(
    Format(
        name="onnx",
        label="ONNX",
        suffixes=(".onnx",),
        runtime="onnxruntime",
        runtime_label="onnxruntime CPU",
        layout="NCHW",
        layouts=("NCHW", "NHWC"),
        quantized_input=False,
        runner=_onnx_runner,
        cpu_provider="CPUExecutionProvider",
        describe=_onnx_describe,
        profile=_onnx_profile,
        probe_import="onnxruntime",
        embed_metadata=_onnx_embed,
        read_metadata=_onnx_read,
        metadata_where="in `metadata_props`",
        readme_heading="ONNX files on onnxruntime",
        feeding_snippet=ONNXRUNTIME_SNIPPET,
        tools=("onnxruntime", "onnx"),
        marker="s",
        providers=_onnx_providers,
        absent_providers=_onnx_absent_providers,
    )
)


# --- TFLite -----------------------------------------------------------------------------------------------------


def _tflite_runner(path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], threads: int | None, _: str):
    """The LiteRT interpreter with XNNPACK (its only CPU backend here: the provider is not a choice)."""
    from pipeline.measure.runtimes import tflite_runner

    return tflite_runner(path, inputs, outputs, threads)


def _tflite_describe(path: Path) -> Specs:
    from pipeline.measure.file_specs import tflite_specs

    return tflite_specs(path)


def _tflite_profile(path: Path) -> ModelProfile:
    from pipeline.measure.model_profile import tflite_profile

    return tflite_profile(path)


def _tflite_embed(source: Path, dest: Path, entries: dict[str, str]) -> None:
    from pipeline.model_metadata import embed_tflite_metadata

    embed_tflite_metadata(source, dest, entries)


def _tflite_read(path: Path) -> dict[str, bytes]:
    from pipeline.model_metadata import read_tflite_metadata

    return read_tflite_metadata(path)


TFLITE_SNIPPET = """\
from ai_edge_litert.interpreter import Interpreter

pixels = np.stack([load_pixels(path) for path in paths])  # paths: your image files
feed = model_input(pixels)
interpreter = Interpreter(model_path=entry["file"])
detail = interpreter.get_input_details()[0]
interpreter.resize_tensor_input(detail["index"], list(feed.shape))
interpreter.allocate_tensors()
interpreter.set_tensor(detail["index"], feed)
interpreter.invoke()
scores = logits(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
classes = [bundle["labels"][i] for i in scores.argmax(1)]
"""

TFLITE = register_format(
    Format(
        name="tflite",
        label="TFLite",
        suffixes=(".tflite",),
        runtime="tflite",
        runtime_label="TFLite XNNPACK",
        layout="NHWC",
        layouts=("NHWC",),
        quantized_input=True,
        runner=_tflite_runner,
        cpu_provider="XNNPACK",
        describe=_tflite_describe,
        profile=_tflite_profile,
        probe_import="ai_edge_litert.interpreter",
        embed_metadata=_tflite_embed,
        read_metadata=_tflite_read,
        metadata_where="as metadata entries of the flatbuffer",
        readme_heading="TFLite files on the LiteRT interpreter",
        feeding_snippet=TFLITE_SNIPPET,
        tools=("ai-edge-litert",),
        marker="^",
        cross_check="tf2onnx",
    )
)
