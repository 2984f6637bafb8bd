"""Checking an exported file against the run's Keras model: samples, runtimes, targets.

The test images (and, for int8, the calibration images) are seeded samples of
a folder, read as training reads them. `measure_parity` runs the exported file
in its own runtime (the `ai-edge-litert` interpreter, `onnxruntime`) and the
Keras model on the same images; `check_targets` lists the targets missed:

    float32, float16   top-1 agreement with the Keras model >= MIN_AGREEMENT
    dynamic, int8      test accuracy at most MAX_ACCURACY_DROP below the Keras model's
    int8               the file at most MAX_INT8_SIZE_RATIO of the float32 file's size
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_ft.utils.errors import KerasFTError

PARITY_BATCH = 32
# Parity targets: float files must agree with the Keras model on top-1; quantized ones
# may lose at most a point of test accuracy; int8 must be at most a third of float32.
MIN_AGREEMENT = 0.995
MAX_ACCURACY_DROP = 0.01
MAX_INT8_SIZE_RATIO = 1 / 3


@dataclass
class Images:
    """A sample of a folder: uint8 pixels, labels, where from."""

    directory: str
    pixels: np.ndarray
    labels: np.ndarray
    of: int


def _sample_folder(directory, class_names, image_size, count: int, seed: int, what: str):
    """A seeded sample of at most `count` usable images of `directory`, read as training does."""
    from keras_ft.data.pipeline import read_images
    from keras_ft.data.scan import scan_folder

    report = scan_folder(directory, class_names=class_names, quiet=True)
    files = list(report.files)
    if not files:
        raise KerasFTError(f"The {what} folder '{directory}' holds no usable images.")
    if len(files) > count:
        chosen = np.random.default_rng(seed).choice(len(files), count, replace=False)
        files = [files[i] for i in sorted(chosen)]
    return Images(
        str(directory),
        read_images([f.path for f in files], image_size),
        np.array([f.label for f in files], np.int32),
        len(report.files),
    )


def parity_sample(record, predictor, test_dir, max_images, seed) -> Images:
    """The test images parity is checked on: `test_dir`, or the run's recorded test folder."""
    test_dir = test_dir or (record.get("data") or {}).get("test_dir")
    if not test_dir:
        raise KerasFTError(
            "The run records no test folder, and parity is checked on one. Pass --test-dir "
            "(test_dir=) with a held-out folder that has the run's class sub-folders."
        )
    if not Path(test_dir).is_dir():
        raise KerasFTError(
            f"Test folder '{test_dir}' does not exist. Pass --test-dir (test_dir=) with the "
            "held-out folder, if it moved since the run."
        )
    return _sample_folder(
        test_dir, predictor.class_names, predictor.image_size, max_images, seed, "test"
    )


def calibration_sample(record, predictor, calibration_dir, count, seed) -> Images:
    """The int8 calibration images: `calibration_dir`, or the run's recorded training folder."""
    directory = calibration_dir or (record.get("data") or {}).get("directory")
    if not directory or not Path(directory).is_dir():
        where = f"'{directory}'" if directory else "of the run"
        raise KerasFTError(
            f"int8 quantization is calibrated on training images, but the training folder "
            f"{where} is not there. Pass --calibration-dir (calibration_dir=) with a folder "
            "of <class>/<image> files like the training data."
        )
    return _sample_folder(directory, None, predictor.image_size, count, seed, "calibration")


def litert_runner(path: Path):
    """A function: uint8 pixels `(N, H, W, 3)` -> probabilities, through the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = target["quantization"]
    batch = [0]

    def run(pixels: np.ndarray) -> np.ndarray:
        if batch[0] != len(pixels):
            interpreter.resize_tensor_input(source["index"], [len(pixels), *source["shape"][1:]])
            interpreter.allocate_tensors()
            batch[0] = len(pixels)
        interpreter.set_tensor(source["index"], pixels.astype(source["dtype"]))
        interpreter.invoke()
        output = interpreter.get_tensor(target["index"]).astype(np.float32)
        return (output - zero_point) * scale if scale else output

    return run


def onnx_runner(path: Path):
    """A function: uint8 pixels `(N, H, W, 3)` -> probabilities, through onnxruntime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda pixels: session.run(None, {name: pixels.astype(np.float32)})[0]


def _timed(run, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """`run` over `pixels` in batches: (probabilities, images per second after a warm-up)."""
    run(pixels[:PARITY_BATCH])  # first call: allocation, kernel selection
    start = time.perf_counter()
    outputs = [run(pixels[i : i + PARITY_BATCH]) for i in range(0, len(pixels), PARITY_BATCH)]
    seconds = time.perf_counter() - start
    return np.concatenate(outputs).astype(np.float32), len(pixels) / seconds


def measure_parity(path: Path, format: str, model, test: Images) -> dict:
    """Compare the exported file, in its runtime, with the Keras model on `test`."""
    runner = litert_runner(path) if format == "litert" else onnx_runner(path)
    exported, exported_speed = _timed(runner, test.pixels)
    reference, reference_speed = _timed(
        lambda pixels: np.asarray(model.predict_on_batch(pixels.astype(np.float32))), test.pixels
    )
    top1, top1_reference = exported.argmax(axis=1), reference.argmax(axis=1)
    return {
        "test_dir": test.directory,
        "images": len(test.pixels),
        "of": test.of,
        "batch_size": PARITY_BATCH,
        "top1_agreement": float(np.mean(top1 == top1_reference)),
        "max_abs_probability_difference": float(np.abs(exported - reference).max()),
        "accuracy": {
            "keras": float(np.mean(top1_reference == test.labels)),
            format: float(np.mean(top1 == test.labels)),
        },
        "images_per_second": {"keras": reference_speed, format: exported_speed},
    }


def check_targets(details: dict, format: str, quantize: str) -> list[str]:
    """One line per parity target the export misses (see the module docstring)."""
    parity, failures = details["parity"], []
    if quantize in ("none", "float16"):
        details["targets"] = {"min_top1_agreement": MIN_AGREEMENT}
        if parity["top1_agreement"] < MIN_AGREEMENT:
            failures.append(
                f"top-1 agreement with the Keras model is {parity['top1_agreement']:.2%}, "
                f"below the target of {MIN_AGREEMENT:.1%}"
            )
    else:
        details["targets"] = {"max_accuracy_drop": MAX_ACCURACY_DROP}
        drop = parity["accuracy"]["keras"] - parity["accuracy"][format]
        if round(drop, 9) > MAX_ACCURACY_DROP:  # 1 image in 100 is a drop of 0.01, not more
            failures.append(
                f"test accuracy drops by {drop:.2%} ({parity['accuracy']['keras']:.2%} -> "
                f"{parity['accuracy'][format]:.2%}), more than the target of "
                f"{MAX_ACCURACY_DROP:.0%}; try --quantize float16, or more --calibration-images"
            )
    if quantize == "int8":
        details["targets"]["max_size_ratio_to_float32"] = MAX_INT8_SIZE_RATIO
        ratio = details["file_bytes"] / details["float32_file_bytes"]
        if ratio > MAX_INT8_SIZE_RATIO:
            failures.append(
                f"the int8 file is {ratio:.2f} of the float32 file's size, above the target "
                f"of {MAX_INT8_SIZE_RATIO:.2f}"
            )
    return failures
