"""Fine-tune on Microsoft's cats-and-dogs photos (25,000 images), broken files and all.

    python examples/cats_vs_dogs.py --output runs/cats_vs_dogs

Downloads `kagglecatsanddogs_5340.zip` once (787 MB) with
`keras.utils.get_file` and writes it as `data/cats_vs_dogs/{train,test}/{cat,dog}/`
with a seeded, stratified 20 % held-out test split (the archive has none).
`--data-dir` pointing at a folder already written that way, or at a folder of
`<class>/<image>` folders (the photos, unpacked: trained on without a test
split), skips the download; `--url` takes a mirror, a `file://` URL or a local
copy of the archive. Offline, pass such a `--data-dir` and `--weights PATH`
(or `none`).

The archive is known to hold files that are not usable images (empty files,
truncated JPEGs). keras_ft's scan finds each one before training; this example
passes `skip_bad=True` (`keras-ft train --skip-bad`) to train on the rest, and
prints what was left out (also recorded in the run's `run.json`).

Expected test accuracy with the defaults (VGG16, ImageNet weights, 5 head +
5 fine-tune epochs from block5_conv1): about 0.97. Not measured here (no
network to download the photos or the ImageNet weights).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import _common  # examples/_common.py: download, unpack, held-out split, flags

URL = (
    "https://download.microsoft.com/download/3/E/1/"
    "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"
)
CLASSES = {"Cat": "cat", "Dog": "dog"}


def prepare(data_dir, url: str = URL, test_fraction: float = 0.2, seed: int = 42, cache_dir=None):
    """Download and unpack the photos once into `data_dir/{train,test}/{cat,dog}/`.

    Every `.jpg` is kept, broken or not: deciding what is usable is the
    scan's job, and its report names each file it leaves out.

    Returns:
        `data_dir` (untouched when it already holds `train/` and `test/`).
    """
    data_dir = Path(data_dir)
    if _common.is_prepared(data_dir):
        return data_dir
    archive = _common.fetch(url, cache_dir)
    with _common.staged(data_dir) as staging:
        images = _common.find_folder(_common.unpack(archive, staging / "raw"), "PetImages")
        files = {new: sorted((images / old).glob("*.jpg")) for old, new in CLASSES.items()}
        counts = _common.move_into(_common.holdout(files, test_fraction, seed), staging)
        _common.write_readme(
            staging,
            f"Microsoft cats-and-dogs photos from {url}\n"
            f"{counts['train']} train / {counts['test']} test files: a stratified "
            f"{test_fraction:.0%} held-out test split, seed {seed}. Some files are not "
            "usable images; train with skip_bad=True (--skip-bad).",
        )
        shutil.rmtree(staging / "raw")  # what is left: Thumbs.db, the licence and readme
    return data_dir


def main(argv=None) -> None:
    parser = _common.example_parser(
        __doc__.splitlines()[0], "data/cats_vs_dogs", head_epochs=5, finetune_epochs=5
    )
    _common.add_download_flags(parser, ("--url", URL, "kagglecatsanddogs_5340.zip"))
    args = parser.parse_args(argv)
    needs = "Microsoft's cats-and-dogs photos (kagglecatsanddogs_5340.zip, 787 MB)"
    with _common.exits_2_when_refused(args, needs):
        train_dir, test_dir = _common.image_folders(
            args.data_dir,
            lambda: prepare(args.data_dir, args.url, seed=args.seed, cache_dir=args.cache_dir),
        )
        _common.fine_tune(args, train_dir, test_dir, skip_bad=True)


if __name__ == "__main__":
    main()
