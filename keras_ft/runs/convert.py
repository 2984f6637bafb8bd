"""Converting a run's model to a LiteRT or ONNX file, and describing the file written.

`write_litert` and `write_onnx` write `model.tflite` or `model.onnx` into a
folder and return what `export.json` says of it: the format, the file's size,
its input and output tensors. See `keras_ft.runs.deploy.export`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from keras_ft.runs.parity import Images

ONNX_OPSET = 17


def float32_copy(model):
    """`model`, or where it computes in a mixed precision (`mixed_precision`), a copy with its
    weights that computes in float32: LiteRT's converter refuses a bfloat16 convolution."""
    import keras

    def layers(parent):
        for layer in parent.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from layers(layer)

    if all(layer.dtype_policy.name == "float32" for layer in layers(model)):
        return model

    def in_float32(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=in_float32, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def convert_litert(saved_model: Path, quantize: str, calibration: Images | None) -> bytes:
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


def write_litert(saved_model, source, staging, quantize, calibration) -> dict:
    """Convert `source` (the run's SavedModel, or one with a split head) into staging."""
    from ai_edge_litert.interpreter import Interpreter

    flatbuffer = convert_litert(source, quantize, calibration)
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
        details["float32_file_bytes"] = len(convert_litert(saved_model, "none", None))
    if calibration is not None:
        details["calibration"] = {
            "directory": calibration.directory,
            "images": len(calibration.pixels),
            "of": calibration.of,
        }
    return details


def write_onnx(model, staging) -> dict:
    """Export `model` into staging as `model.onnx` (opset `ONNX_OPSET`), float32 pixels in."""
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
