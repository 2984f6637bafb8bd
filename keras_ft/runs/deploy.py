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
per second of both. The parity targets are in `TARGETS`; an export that
misses one is still written, for inspection, and the command exits 1.

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
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_ft.utils.version import __version__
from keras_ft.config import SEED, check
from keras_ft.utils.errors import KerasFTError
from keras_ft.runs.output import check_destination, write_failed
from keras_ft.utils.text import printable

FORMATS = ("saved_model", "litert", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
ONNX_OPSET = 17
PARITY_BATCH = 32
# What each format needs beyond TensorFlow (distribution, module); the extra of the same
# name installs them: pip install "keras-ft[litert]".
EXTRAS = {
    "litert": (("ai-edge-litert", "ai_edge_litert"),),
    "onnx": (("onnx", "onnx"), ("tf2onnx", "tf2onnx"), ("onnxruntime", "onnxruntime")),
}
# Parity targets: float files must agree with the Keras model on top-1; quantized ones
# may lose at most a point of test accuracy; int8 must be at most a third of float32.
MIN_AGREEMENT = 0.995
MAX_ACCURACY_DROP = 0.01
MAX_INT8_SIZE_RATIO = 1 / 3


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
            first, see `int8_kernels`).
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
    from keras_ft.runs.artifacts import check_saved_model, copy_verified, export_saved_model, load

    predictor = load(run_dir, signing_key=signing_key)
    record = predictor.record
    test = _parity_sample(record, predictor, test_dir, max_images, seed)
    calibration = None
    if quantize == "int8":
        calibration = _calibration_sample(
            record, predictor, calibration_dir, calibration_images, seed
        )
    staging = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as scratch:
            if format == "litert":
                saved_model = Path(scratch) / "saved_model"
                copy_verified(run_dir, "saved_model", saved_model, record["manifest"])
                check_saved_model(saved_model, predictor.model, run_dir)
                source, head, kernels = saved_model, None, None
                if quantize in ("dynamic", "int8"):
                    model = predictor.model
                    if quantize == "int8":
                        model, kernels = int8_kernels(model, calibration.pixels)
                    model, head = split_head(model)
                    if head is not None or kernels is not None:
                        source = Path(scratch) / "for_quantization"
                        export_saved_model(model, source)
                details = _write_litert(saved_model, source, staging, quantize, calibration)
                if kernels is not None:
                    details["kernels"] = kernels
                if head is not None:
                    details["head"] = head
            else:
                details = _write_onnx(predictor.model, staging)
        details["labels"] = "labels.txt"
        (staging / "labels.txt").write_text("".join(f"{name}\n" for name in predictor.class_names))
        details["run"] = {
            "run_dir": str(run_dir),
            "weights_sha256": record["weights_sha256"],
            "test_accuracy": record.get("test_accuracy"),
        }
        details["parity"] = _parity(staging / details["file"], format, predictor.model, test)
        failures = _check_targets(details, format, quantize)
        details["targets_met"] = not failures
        details["failures"] = failures
        details["environment"] = _environment(format)
        (staging / "export.json").write_text(json.dumps(details, indent=2) + "\n")
        if output.exists():
            output.rmdir()  # empty, checked above
        os.replace(staging, output)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):  # a full or read-only disk
            raise write_failed(output, "OUTPUT", error) from None
        raise
    return ExportResult(output / details["file"], details, failures)


@dataclass
class _Images:
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
    return _Images(
        str(directory),
        read_images([f.path for f in files], image_size),
        np.array([f.label for f in files], np.int32),
        len(report.files),
    )


def _parity_sample(record, predictor, test_dir, max_images, seed) -> _Images:
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


def _calibration_sample(record, predictor, calibration_dir, count, seed) -> _Images:
    directory = calibration_dir or (record.get("data") or {}).get("directory")
    if not directory or not Path(directory).is_dir():
        where = f"'{directory}'" if directory else "of the run"
        raise KerasFTError(
            f"int8 quantization is calibrated on training images, but the training folder "
            f"{where} is not there. Pass --calibration-dir (calibration_dir=) with a folder "
            "of <class>/<image> files like the training data."
        )
    return _sample_folder(directory, None, predictor.image_size, count, seed, "calibration")


def split_head(model, ratio: float = 4.0):
    """The classifier with a head that quantizes well, computing the same function.

    The converter folds the head's feature BatchNormalization into the next
    Dense layer: its weights are multiplied, per input feature, by the
    normalisation's scale, which is ~30 for features that were nearly
    constant in training (1 / sqrt(epsilon)). Those rows then set each output's
    int8 range and the other weights keep a few levels: a run that is 92%
    accurate in float32 loses 3-4 points. Here the fold is done by hand and
    the rows whose largest weight is above `ratio` times the median row's go
    to a Dense layer of their own; the two are added.

    Returns:
        `(model, description)`; `(model, None)` unchanged when there is no
        feature normalisation or no row to split off.
    """
    import keras

    names = [layer.name for layer in model.layers]
    if "feature_norm" not in names:
        return model, None
    index = names.index("feature_norm")
    norm = model.layers[index]
    dense = next(x for x in model.layers[index + 1 :] if isinstance(x, keras.layers.Dense))
    gamma, beta, mean, variance = (np.asarray(w) for w in norm.get_weights())
    scale = gamma / np.sqrt(variance + norm.epsilon)
    kernel, bias = dense.get_weights()
    folded, folded_bias = scale[:, None] * kernel, (beta - mean * scale) @ kernel + bias
    rows = np.abs(folded).max(axis=1)
    large = rows > ratio * np.median(rows)
    if not large.any():
        return model, None
    parts = []
    for name, group in (("large", np.flatnonzero(large)), ("rest", np.flatnonzero(~large))):
        layer = keras.layers.Dense(kernel.shape[1], use_bias=name == "rest", name=name)
        take = keras.layers.Lambda(lambda x, group=group: keras.ops.take(x, group, axis=-1))
        parts.append(layer(take(norm.input)))
        layer.set_weights([folded[group]] + ([folded_bias] if name == "rest" else []))
    x = keras.layers.Activation(dense.activation, dtype="float32")(keras.layers.Add()(parts))
    for layer in model.layers[model.layers.index(dense) + 1 :]:
        if not isinstance(layer, keras.layers.Dropout):  # inference: dropout does nothing
            x = layer(x)
    description = (
        f"feature_norm folded into {dense.name}, whose {int(large.sum())} of {len(rows)} "
        f"rows with weights above {ratio:g}x the median row's are a separate layer"
    )
    return keras.Model(model.input, x, name=model.name), description


def _conv_layers(model):
    """`(container, layer)` for each Conv2D and DepthwiseConv2D of `model` and of the models
    it calls (the backbone); deeper ones are left out."""
    import keras

    convolutions = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    for layer in model.layers:
        inner = layer.layers if isinstance(layer, keras.Model) else [layer]
        owner = layer if isinstance(layer, keras.Model) else model
        yield from ((owner, x) for x in inner if isinstance(x, convolutions))


def _mean_inputs(model, layers, pixels: np.ndarray) -> dict:
    """Each layer's input averaged over the images, rows and columns: `{name: (C,)}`."""
    import keras

    feeds = {}  # container -> a model from `model`'s input to the container's input
    for container, _ in layers:
        if container is model:
            feeds[container.name] = None
        elif container.name not in feeds:
            node = container._inbound_nodes[0]  # the sub-model's call inside `model`
            feeds[container.name] = keras.Model(model.input, node.input_tensors[0])
    sums = {}
    for name, feed in feeds.items():
        container = model if feed is None else model.get_layer(name)
        chosen = [layer for owner, layer in layers if owner is container]
        pooled = [keras.layers.GlobalAveragePooling2D()(layer.input) for layer in chosen]
        means = keras.Model(container.input, pooled)
        for start in range(0, len(pixels), PARITY_BATCH):
            batch = pixels[start : start + PARITY_BATCH].astype(np.float32)
            if feed is not None:
                batch = feed.predict_on_batch(batch)
            outputs = means.predict_on_batch(batch)
            outputs = outputs if len(chosen) > 1 else [outputs]
            for layer, output in zip(chosen, outputs, strict=True):
                sums[layer.name] = sums.get(layer.name, 0.0) + np.asarray(output, np.float64).sum(0)
    return {name: total / len(pixels) for name, total in sums.items()}


def _consumer(layer):
    """The one layer that reads `layer`'s output, or None."""
    consumers = [node.operation for node in layer._outbound_nodes]
    return consumers[0] if len(consumers) == 1 else None


def int8_kernels(model, pixels: np.ndarray):
    """A copy of `model` with its convolution kernels rounded as full-integer conversion
    rounds them, and the error that rounding makes on average taken out of their biases.

    The converter stores each kernel in int8, per output channel (symmetric,
    scale = largest absolute weight / 127). On images with large areas of one
    colour, such as a digit's black background, a kernel sums a constant input
    over its taps, and the rounding errors of its weights add up to a constant
    shift of its output there, which the float kernel did not make. Where a
    BatchNormalization with a large gain follows (up to ~50 in
    EfficientNet-Lite0's first blocks), the shift is multiplied. On a Lite0 run
    on the digits sample, int8 kernels alone (float activations) moved the
    pooled features by 15% and changed 6% of the predictions.

    Here each kernel is rounded to the grid the converter uses (so converting
    changes it no further), and its expected output change on the calibration
    images, `(W_int8 - W) . E[x]` per output channel ("bias correction", Nagel
    et al., Data-Free Quantization, 2019), is subtracted from its bias, or
    added to the moving mean of the BatchNormalization that reads it. A kernel
    with neither is left as it is. On that run the features then moved by 5%
    and every prediction was kept.

    Args:
        model: the classifier (not changed).
        pixels: calibration images, `(N, H, W, 3)` 0-255 RGB.

    Returns:
        `(copy, description)`; the copy computes what the int8 file will, up to
        the rounding of activations.
    """
    import keras

    copy, preprocessing = _caffe_as_convolution(model)
    layers = [
        (container, layer)
        for container, layer in _conv_layers(copy)
        if getattr(layer, "groups", 1) == 1
    ]
    means = _mean_inputs(copy, layers, pixels)
    corrected = 0
    for _, layer in layers:
        kernel = np.asarray(layer.kernel, np.float64)
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        # Per output channel: (kh, kw, in, out) -> out; depthwise (kh, kw, C, m) -> (C, m).
        axes = (0, 1) if depthwise else (0, 1, 2)
        scale = np.abs(kernel).max(axis=axes, keepdims=True) / 127
        scale[scale == 0] = 1.0
        rounded = np.round(kernel / scale) * scale
        mean = means[layer.name]
        if depthwise:
            shift = np.einsum("hwcm,c->cm", rounded - kernel, mean).reshape(-1)
        else:
            shift = np.einsum("hwio,i->o", rounded - kernel, mean)
        norm = None if layer.use_bias else _consumer(layer)
        if layer.use_bias:
            layer.bias.assign((np.asarray(layer.bias, np.float64) - shift).astype("float32"))
        elif isinstance(norm, keras.layers.BatchNormalization) and norm.axis in (-1, 3):
            moving_mean = np.asarray(norm.moving_mean, np.float64)
            norm.moving_mean.assign((moving_mean + shift).astype("float32"))
        else:
            continue
        layer.kernel.assign(rounded.astype("float32"))
        corrected += 1
    description = (
        f"{corrected} of {len(layers)} convolution kernels rounded to their int8 grid, each "
        f"one's mean output change on the {len(pixels)} calibration images taken out of its "
        "bias (or the moving mean of the BatchNormalization after it)"
    )
    if preprocessing:
        description = f"{preprocessing}; {description}"
    return copy, description


def _caffe_as_convolution(model):
    """A copy of `model` whose caffe-style `Preprocess` layer is a 1x1 convolution.

    Caffe preprocessing (VGG's: RGB to BGR, minus the ImageNet mean) by the
    `Preprocess` layer of runs recorded before `preprocessing_layers` existed
    reverses the channel axis. The converter gives the int8 reverse an output
    scale and zero point other than its input's, while the int8 kernel copies
    the bytes as they are, so every pixel reached the first convolution ~100
    levels off (a 64 px VGG16 digits run: its first layer's output 35% off,
    3 points of test accuracy lost). The same map as a 1x1 convolution (what
    `keras_ft.models.classifier.preprocessing_layer` builds for newer runs: a permutation
    with weights 1 and the mean as bias, exact in float32 and in int8)
    quantizes like any other layer.

    Returns:
        `(copy, description)`; the description is empty when there was nothing to replace.
    """
    import keras

    from keras_ft.models.classifier import Preprocess, preprocessing_layer

    replaced = []

    def clone(layer):
        if isinstance(layer, Preprocess) and layer.mode == "caffe":
            replaced.append(layer.name)
            return preprocessing_layer("caffe")
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer, target in zip(model.layers, copy.layers, strict=True):
        if layer.name not in replaced:
            target.set_weights(layer.get_weights())
    description = (
        "the caffe Preprocess layer (RGB to BGR, minus the mean) as a 1x1 convolution"
        if replaced
        else ""
    )
    return copy, description


def _convert_litert(saved_model: Path, quantize: str, calibration: _Images | None) -> bytes:
    """The run's `serving_default` signature as a LiteRT flatbuffer, quantized as asked."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model), signature_keys=["serving_default"]
    )
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        pixels = calibration.pixels.astype(np.float32)
        converter.representative_dataset = lambda: ([image[None]] for image in pixels)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def _tensor(detail: dict) -> dict:
    """A LiteRT tensor's name, dtype, shape and (if quantized) scale and zero point."""
    shape = [None if d < 0 else int(d) for d in detail["shape_signature"]]
    described = {"name": detail["name"], "dtype": np.dtype(detail["dtype"]).name, "shape": shape}
    scale, zero_point = detail["quantization"]
    if scale:
        described["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return described


def _write_litert(saved_model, source, staging, quantize, calibration) -> dict:
    """Convert `source` (the run's SavedModel, or one with a split head) into staging."""
    from ai_edge_litert.interpreter import Interpreter

    flatbuffer = _convert_litert(source, quantize, calibration)
    (staging / "model.tflite").write_bytes(flatbuffer)
    interpreter = Interpreter(model_content=flatbuffer)
    details = {
        "format": "litert",
        "quantize": quantize,
        "file": "model.tflite",
        "file_bytes": len(flatbuffer),
        "input": {
            **_tensor(interpreter.get_input_details()[0]),
            "pixels": "RGB, 0-255, resized to the shape; preprocessing is inside the model",
        },
        "output": {**_tensor(interpreter.get_output_details()[0]), "values": "probabilities"},
    }
    if quantize != "none":
        details["float32_file_bytes"] = len(_convert_litert(saved_model, "none", None))
    if calibration is not None:
        details["calibration"] = {
            "directory": calibration.directory,
            "images": len(calibration.pixels),
            "of": calibration.of,
        }
    return details


def _write_onnx(model, staging) -> dict:
    import onnx
    import tensorflow as tf

    path = staging / "model.onnx"
    signature = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="images")]
    with warnings.catch_warnings():  # Keras' tf2onnx patch probes a removed numpy name
        warnings.simplefilter("ignore", FutureWarning)
        model.export(
            str(path),
            format="onnx",
            verbose=False,
            input_signature=signature,
            opset_version=ONNX_OPSET,
        )
    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(value):
        dims = value.type.tensor_type.shape.dim
        return {
            "name": value.name,
            "dtype": "float32",
            "shape": [d.dim_value if d.HasField("dim_value") else None for d in dims],
        }

    return {
        "format": "onnx",
        "quantize": "none",
        "file": "model.onnx",
        "file_bytes": path.stat().st_size,
        "opset": ONNX_OPSET,
        "converter": "keras Model.export(format='onnx') (tf2onnx)",
        "input": {
            **describe(graph.input[0]),
            "pixels": "RGB, 0-255, resized to the shape; preprocessing is inside the model",
        },
        "output": {**describe(graph.output[0]), "values": "probabilities"},
    }


def _litert_runner(path: Path):
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


def _onnx_runner(path: Path):
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


def _parity(path: Path, format: str, model, test: _Images) -> dict:
    """Compare the exported file, in its runtime, with the Keras model on `test`."""
    runner = _litert_runner(path) if format == "litert" else _onnx_runner(path)
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


def _check_targets(details: dict, format: str, quantize: str) -> list[str]:
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
