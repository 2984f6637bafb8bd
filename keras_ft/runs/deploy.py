"""Deploying a run: TF Serving, LiteRT (TensorFlow Lite) and ONNX, each checked for parity.

`export(run_dir, output, format=...)` verifies the run directory (as `load`
does), then writes one of:

    saved_model   output/<version>/, the run's SavedModel in a TF Serving layout
                  (see `keras_ft.runs.artifacts.export_for_serving`)
    litert        output/model.tflite, labels.txt, export.json
    onnx          output/model.onnx, labels.txt, export.json

A LiteRT or ONNX file is run in its own runtime (the `ai-edge-litert`
interpreter, `onnxruntime`) on the run's test images, and `export.json`
records how it compares with the run's Keras model: top-1 agreement, largest
absolute probability difference, test accuracy of both, file size and images
per second of both. The parity targets are in `keras_ft.runs.parity`; an
export that misses one is still written, for inspection, and the command
exits 1. The converters are in `keras_ft.runs.convert`, the quantization-friendly
model copies in `keras_ft.runs.quantize`.

The runtimes are optional extras: `pip install "keras-ft[litert]"` or
`"keras-ft[onnx]"`.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from keras_ft.config import SEED, check
from keras_ft.runs.convert import float32_copy, write_litert, write_onnx
from keras_ft.runs.output import check_destination, write_failed
from keras_ft.runs.parity import calibration_sample, check_targets, measure_parity, parity_sample
from keras_ft.runs.quantize import int8_kernels, split_head
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.text import printable
from keras_ft.utils.version import __version__

FORMATS = ("saved_model", "litert", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
# What each format needs beyond TensorFlow (distribution, module); the extra of the same
# name installs them: pip install "keras-ft[litert]".
EXTRAS = {
    "litert": (("ai-edge-litert", "ai_edge_litert"),),
    "onnx": (("onnx", "onnx"), ("tf2onnx", "tf2onnx"), ("onnxruntime", "onnxruntime")),
}


@dataclass
class ExportResult:
    """What `export` wrote.

    Attributes:
        path: the file written (`model.tflite`, `model.onnx`), or the
            SavedModel version directory.
        record: the contents of `export.json` (`None` for a SavedModel).
        failures: one line per parity target missed; empty when all are met.
    """

    path: Path
    record: dict | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def check_options(format: str, quantize: str) -> None:
    """Refuse an unknown format or quantization, or one that does not apply."""
    if format not in FORMATS:
        raise KerasFTError(
            f"Invalid `format`: expected one of {', '.join(FORMATS)}, received {format!r}."
        )
    if quantize not in QUANTIZATIONS:
        raise KerasFTError(
            f"Invalid `quantize`: expected one of {', '.join(QUANTIZATIONS)}, "
            f"received {quantize!r}."
        )
    if quantize != "none" and format != "litert":
        raise KerasFTError(
            f"`quantize={quantize!r}` applies to format 'litert' only, received "
            f"format {format!r}. Pass --format litert, or leave --quantize out."
        )


def require_extra(format: str) -> None:
    """Refuse a format whose runtime packages are not installed, naming the extra."""
    for package, module in EXTRAS.get(format, ()):
        try:
            importlib.import_module(module)
        except ImportError:
            raise KerasFTError(
                f"Exporting to {format} needs the package '{package}', which is not installed. "
                f'Install the extra: pip install "keras-ft[{format}]".'
            ) from None


def export(
    run_dir,
    output,
    format: str = "saved_model",
    quantize: str = "none",
    version: int | None = None,
    test_dir=None,
    calibration_dir=None,
    calibration_images: int = 200,
    max_images: int = 500,
    seed: int = 0,
    signing_key=None,
) -> ExportResult:
    """Export a run for serving, a phone or a browser, and check the copy against the run.

    Args:
        run_dir: a run directory; it is verified first, as `keras_ft.load` does.
        output: for `"saved_model"`, the TF Serving model base path (a version
            directory is written inside); otherwise a new directory, which must
            not exist or be empty.
        format: `"saved_model"`, `"litert"` or `"onnx"`.
        quantize: LiteRT only: `"none"` (float32), `"float16"` (half-precision
            weights), `"dynamic"` (int8 weights, float activations) or `"int8"`
            (full-integer, uint8 pixels in, uint8 probabilities out, calibrated
            on training images; the kernels are rounded and bias-corrected
            first, see `keras_ft.runs.quantize.int8_kernels`).
        version: SavedModel only: the version number (default: the next free one).
        test_dir: the held-out folder to check parity on; `None` takes the
            run's recorded test folder.
        calibration_dir: int8 only: a folder in the training layout
            (`<class>/<image>`) to calibrate on; `None` takes the run's
            recorded training folder.
        calibration_images: int8 only: how many images (a seeded sample) to calibrate on.
        max_images: parity uses a seeded sample of at most this many test images.
        seed: the seed of both samples.
        signing_key: as for `keras_ft.load`.

    Returns:
        An `ExportResult`; `result.passed` says whether every parity target was met.
    """
    check_options(format, quantize)
    if format == "saved_model":  # which checks its output itself
        from keras_ft.runs.artifacts import export_for_serving

        return ExportResult(export_for_serving(run_dir, output, version, signing_key))
    _check_file_export(
        run_dir, output, format, test_dir, calibration_dir, calibration_images, max_images, seed
    )
    from keras_ft.runs.loading import load  # TensorFlow: only once the export can be written

    output = Path(output)
    predictor = load(run_dir, signing_key=signing_key)
    record = predictor.record
    test = parity_sample(record, predictor, test_dir, max_images, seed)
    calibration = None
    if quantize == "int8":
        calibration = calibration_sample(
            record, predictor, calibration_dir, calibration_images, seed
        )
    details = _write_export(run_dir, output, format, quantize, predictor, test, calibration)
    return ExportResult(output / details["file"], details, details["failures"])


def _check_file_export(
    run_dir, output, format, test_dir, calibration_dir, calibration_images, max_images, seed
) -> None:
    """Refuse a LiteRT or ONNX export that cannot be written, before the run is loaded."""
    check_destination(output, "OUTPUT", (test_dir, calibration_dir), (run_dir,))
    require_extra(format)
    for name, value in (("calibration_images", calibration_images), ("max_images", max_images)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KerasFTError(f"Invalid `{name}`: expected an int >= 1, received {value!r}.")
    check(SEED(seed), "seed", str(SEED), seed)
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise KerasFTError(
            f"Export directory '{output}' already exists and is not empty. Choose another "
            "output directory, or remove it first."
        )


def _write_export(run_dir, output: Path, format, quantize, predictor, test, calibration) -> dict:
    """Write the file, labels.txt and export.json into a hidden sibling, then rename it to
    `output`; nothing is left behind on failure. Returns the contents of export.json."""
    staging = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as scratch:
            if format == "litert":
                details = _write_litert_file(
                    run_dir, predictor, staging, Path(scratch), quantize, calibration
                )
            else:
                details = write_onnx(float32_copy(predictor.model), staging)
        _write_record(details, staging, run_dir, predictor, format, quantize, test)
        if output.exists():
            output.rmdir()  # empty, checked by _check_file_export
        os.replace(staging, output)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):  # a full or read-only disk
            raise write_failed(output, "OUTPUT", error) from None
        raise
    return details


def _write_litert_file(run_dir, predictor, staging, scratch: Path, quantize, calibration) -> dict:
    """Convert the run's verified SavedModel (or, quantized, a friendlier copy of the model)."""
    from keras_ft.runs.manifest import copy_verified
    from keras_ft.runs.serving import check_saved_model, export_saved_model

    saved_model = scratch / "saved_model"
    copy_verified(run_dir, "saved_model", saved_model, predictor.record["manifest"])
    check_saved_model(saved_model, predictor.model, run_dir)
    model = float32_copy(predictor.model)
    if model is not predictor.model:  # a mixed-precision run's, computing in float32
        saved_model = scratch / "float32"
        export_saved_model(model, saved_model)
    source, head, kernels = saved_model, None, None
    if quantize in ("dynamic", "int8"):
        if quantize == "int8":
            model, kernels = int8_kernels(model, calibration.pixels)
        model, head = split_head(model)
        if head is not None or kernels is not None:
            source = scratch / "for_quantization"
            export_saved_model(model, source)
    details = write_litert(saved_model, source, staging, quantize, calibration)
    if kernels is not None:
        details["kernels"] = kernels
    if head is not None:
        details["head"] = head
    return details


def _write_record(details, staging, run_dir, predictor, format, quantize, test) -> None:
    """Write labels.txt, check parity and the targets, and write export.json."""
    record = predictor.record
    details["labels"] = "labels.txt"
    (staging / "labels.txt").write_text("".join(f"{name}\n" for name in predictor.class_names))
    details["run"] = {
        "run_dir": str(run_dir),
        "weights_sha256": record["weights_sha256"],
        "test_accuracy": record.get("test_accuracy"),
    }
    details["parity"] = measure_parity(staging / details["file"], format, predictor.model, test)
    failures = check_targets(details, format, quantize)
    details["targets_met"] = not failures
    details["failures"] = failures
    details["environment"] = _environment(format)
    (staging / "export.json").write_text(json.dumps(details, indent=2) + "\n")


def _environment(format: str) -> dict:
    from importlib.metadata import version

    import tensorflow as tf

    packages = {"keras_ft": __version__, "tensorflow": tf.__version__}
    for package, _ in EXTRAS[format]:
        packages[package] = version(package)
    return {**packages, "machine": platform.machine(), "cpus": os.cpu_count()}


def summary(result: ExportResult) -> str:
    """What `keras-ft export` prints: the file, the parity figures, the targets missed."""
    if result.record is None:
        return printable(f"exported: {result.path}")
    record, parity = result.record, result.record["parity"]
    name = record["format"]
    size = f"{record['file_bytes'] / 1e6:.2f} MB"
    if "float32_file_bytes" in record:
        size += f" (float32: {record['float32_file_bytes'] / 1e6:.2f} MB)"
    lines = [
        printable(f"exported: {result.path}, {size}"),
        f"parity on {parity['images']} of {parity['of']} test images: top-1 agreement "
        f"{parity['top1_agreement']:.2%}, largest probability difference "
        f"{parity['max_abs_probability_difference']:.4f}",
        f"test accuracy: keras {parity['accuracy']['keras']:.4f}, "
        f"{name} {parity['accuracy'][name]:.4f}",
        f"images/s (batches of {parity['batch_size']}): keras "
        f"{parity['images_per_second']['keras']:.1f}, {name} "
        f"{parity['images_per_second'][name]:.1f}",
        printable(f"record: {result.path.parent / 'export.json'}"),
    ]
    lines += [f"target missed: {failure}" for failure in result.failures]
    return "\n".join(lines)
