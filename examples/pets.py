"""Fine-tune on the Oxford-IIIT Pet dataset: 37 cat and dog breeds, with its official test split.

    python examples/pets.py --output runs/pets

Downloads `images.tar.gz` (755 MB) and `annotations.tar.gz` (19 MB) once with
`keras.utils.get_file` and writes `data/pets/{train,test}/<breed>/` from the
dataset's own split, `annotations/trainval.txt` (3,680 images) and
`annotations/test.txt` (3,669 images), so results compare with published ones.
`--data-dir` pointing at a folder already written that way, or at a folder
of `<breed>/<image>` folders (trained on without a test split), skips the
download; `--url` and `--annotations-url` take mirrors, `file://` URLs or
local copies of the archives. Offline, pass such a `--data-dir` and
`--weights PATH` (or `none`).

Expected test accuracy with the defaults (ResNet50, ImageNet weights, 10 head
+ 10 fine-tune epochs from conv5): about 0.90. Not measured here (no network
to download the images or the ImageNet weights).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import _common  # examples/_common.py: download, unpack, held-out split, flags

IMAGES_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz"
ANNOTATIONS_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz"


def read_split(path) -> list[str]:
    """Image names (no extension) listed in `trainval.txt` or `test.txt`.

    Each line is `NAME CLASS_ID SPECIES BREED_ID`; `#` lines are comments.
    """
    names = []
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            names.append(line.split()[0])
    return names


def breed(name: str) -> str:
    """`"american_pit_bull_terrier_12"` -> `"american_pit_bull_terrier"`."""
    return name.rsplit("_", 1)[0]


def prepare(data_dir, images_url=IMAGES_URL, annotations_url=ANNOTATIONS_URL, cache_dir=None):
    """Download and unpack the pets once into `data_dir/{train,test}/<breed>/`.

    Returns:
        `data_dir` (untouched when it already holds `train/` and `test/`).
    """
    data_dir = Path(data_dir)
    if _common.is_prepared(data_dir):
        return data_dir
    images_archive = _common.fetch(images_url, cache_dir)
    annotations_archive = _common.fetch(annotations_url, cache_dir)
    with _common.staged(data_dir) as staging:
        images = _common.find_folder(_common.unpack(images_archive, staging / "raw"), "images")
        annotations = _common.find_folder(
            _common.unpack(annotations_archive, staging / "raw"), "annotations"
        )
        splits, missing = {}, []
        for split, listing in (("train", "trainval.txt"), ("test", "test.txt")):
            splits[split] = {}
            for name in read_split(annotations / listing):
                path = images / f"{name}.jpg"
                if path.is_file():
                    splits[split].setdefault(breed(name), []).append(path)
                else:
                    missing.append(name)
        counts = _common.move_into(splits, staging)
        _common.write_readme(
            staging,
            f"Oxford-IIIT Pet from {images_url} and {annotations_url}\n"
            f"{counts['train']} train (trainval.txt) / {counts['test']} test (test.txt) images, "
            f"the official split. Listed but missing from the archive: {len(missing)}.",
        )
        shutil.rmtree(staging / "raw")
    return data_dir


def main(argv=None) -> None:
    parser = _common.example_parser(__doc__.splitlines()[0], "data/pets", backbone="resnet50")
    _common.add_download_flags(
        parser,
        ("--url", IMAGES_URL, "images.tar.gz"),
        ("--annotations-url", ANNOTATIONS_URL, "annotations.tar.gz"),
    )
    args = parser.parse_args(argv)
    needs = "the Oxford-IIIT Pet images and annotations (images.tar.gz, annotations.tar.gz, 774 MB)"
    with _common.exits_2_when_refused(args, needs):
        train_dir, test_dir = _common.image_folders(
            args.data_dir,
            lambda: prepare(
                args.data_dir, args.url, args.annotations_url, cache_dir=args.cache_dir
            ),
        )
        _common.fine_tune(args, train_dir, test_dir, skip_bad=True)


if __name__ == "__main__":
    main()
