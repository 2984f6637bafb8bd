"""Fine-tune on the TensorFlow flowers photos: 3,670 photos of 5 kinds of flower.

    python examples/flowers.py --output runs/flowers

Downloads `flower_photos.tgz` once (218 MB) with `keras.utils.get_file` and
writes it as `data/flowers/{train,test}/<class>/` with a seeded, stratified
20 % held-out test split (the archive has none). `--data-dir` pointing at a
folder already written that way, or at a folder of `<class>/<image>` folders
(the photos, unpacked: trained on without a test split), skips the download;
`--url` takes a mirror, a `file://` URL or a local copy of the archive.
Offline, pass such a `--data-dir` and `--weights PATH` (or `none`).

Expected test accuracy with the defaults (VGG16, ImageNet weights, 10 head +
10 fine-tune epochs from block5_conv1): about 0.90. Not measured here (no
network to download the photos or the ImageNet weights).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import _common  # examples/_common.py: download, unpack, held-out split, flags

URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


def prepare(data_dir, url: str = URL, test_fraction: float = 0.2, seed: int = 42, cache_dir=None):
    """Download and unpack the flowers once into `data_dir/{train,test}/<class>/`.

    Returns:
        `data_dir` (untouched when it already holds `train/` and `test/`).
    """
    data_dir = Path(data_dir)
    if _common.is_prepared(data_dir):
        return data_dir
    archive = _common.fetch(url, cache_dir)
    with _common.staged(data_dir) as staging:
        photos = _common.find_folder(_common.unpack(archive, staging / "raw"), "flower_photos")
        files = {
            folder.name: sorted(folder.glob("*.jpg"))
            for folder in sorted(photos.iterdir())
            if folder.is_dir()
        }
        counts = _common.move_into(_common.holdout(files, test_fraction, seed), staging)
        _common.write_readme(
            staging,
            f"TensorFlow flowers photos from {url}\n"
            f"{counts['train']} train / {counts['test']} test images: a stratified "
            f"{test_fraction:.0%} held-out test split, seed {seed}.",
        )
        if (photos / "LICENSE.txt").is_file():  # the photographers' credits (CC-BY)
            shutil.move(photos / "LICENSE.txt", staging / "LICENSE.txt")
        shutil.rmtree(staging / "raw")
    return data_dir


def main(argv=None) -> None:
    parser = _common.example_parser(__doc__.splitlines()[0], "data/flowers")
    _common.add_download_flags(parser, ("--url", URL, "flower_photos.tgz"))
    args = parser.parse_args(argv)
    with _common.exits_2_when_refused(args, "the flowers photos (flower_photos.tgz, 218 MB)"):
        train_dir, test_dir = _common.image_folders(
            args.data_dir,
            lambda: prepare(args.data_dir, args.url, seed=args.seed, cache_dir=args.cache_dir),
        )
        _common.fine_tune(args, train_dir, test_dir)


if __name__ == "__main__":
    main()
