"""Fine-tune on CIFAR-10 (60,000 32x32 images, 10 classes), upscaled to the backbone's size.

    python examples/cifar10.py --output runs/cifar10

Loads CIFAR-10 with `keras.datasets.cifar10.load_data()` (downloaded once by
Keras, 163 MB, into `~/.keras/datasets`) and writes it once as PNG files,
`data/cifar10/{train,test}/<class>/`, keeping CIFAR-10's own split: 50,000
training and 10,000 test images. `--data-dir` pointing at a folder already
written that way, or at a folder of `<class>/<image>` folders (trained on
without a test split), skips the download; offline, pass such a `--data-dir`
and `--weights PATH` (or `none`). The 32x32 images are resized to the
backbone's input size (224 px for ResNet50) when they are read, as ImageNet
backbones are at their best at the size they were trained at.

Expected test accuracy with the defaults (ResNet50, ImageNet weights, 3 head +
5 fine-tune epochs from conv5): about 0.93. Not measured here (no network to
download CIFAR-10 or the ImageNet weights); training at 224 px wants a GPU.
"""

from __future__ import annotations

from pathlib import Path

import _common  # examples/_common.py: download, unpack, held-out split, flags
import numpy as np
from PIL import Image

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def write_split(folder, images: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Write `images` (N, 32, 32, 3) uint8 as `folder/<class>/<index>.png`; return counts."""
    labels = np.asarray(labels).reshape(-1)
    counts = dict.fromkeys(CLASSES, 0)
    for name in CLASSES:
        (Path(folder) / name).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = CLASSES[int(label)]
        Image.fromarray(image).save(Path(folder) / name / f"{index:05d}.png")
        counts[name] += 1
    return counts


def prepare(data_dir):
    """Write CIFAR-10 once into `data_dir/{train,test}/<class>/` (its own train/test split).

    Returns:
        `data_dir` (untouched when it already holds `train/` and `test/`).
    """
    import keras

    data_dir = Path(data_dir)
    if _common.is_prepared(data_dir):
        return data_dir
    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    with _common.staged(data_dir) as staging:
        train = write_split(staging / "train", x_train, y_train)
        test = write_split(staging / "test", x_test, y_test)
        _common.write_readme(
            staging,
            "CIFAR-10 from keras.datasets.cifar10.load_data(), as PNG files.\n"
            f"{sum(train.values())} train / {sum(test.values())} test images: CIFAR-10's "
            "own split.",
        )
    return data_dir


def main(argv=None) -> None:
    parser = _common.example_parser(
        __doc__.splitlines()[0],
        "data/cifar10",
        backbone="resnet50",
        head_epochs=3,
        finetune_epochs=5,
    )
    args = parser.parse_args(argv)
    with _common.exits_2_when_refused(args, "CIFAR-10 (keras.datasets.cifar10, 163 MB)"):
        train_dir, test_dir = _common.image_folders(args.data_dir, lambda: prepare(args.data_dir))
        _common.fine_tune(args, train_dir, test_dir)


if __name__ == "__main__":
    main()
