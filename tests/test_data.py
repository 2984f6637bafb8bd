"""keras_ft.data.folder: RGB conversion, the ImageFolder pipeline, its errors, the split,
augmentation."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import write_folder
from PIL import Image

from keras_ft.data.decode import pil_to_rgb
from keras_ft.data.folder import ImageFolder
from keras_ft.data.pipeline import read_images, split_files, stable_fraction
from keras_ft.data.scan import ImageFile
from keras_ft.runs.reproducibility import seed_everything
from keras_ft.utils.errors import KerasFTError


def batches(dataset) -> tuple[np.ndarray, np.ndarray]:
    """All (images, labels) of a batched dataset as two numpy arrays."""
    images, labels = [], []
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def batch_list(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.dtype == xb.dtype
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def sorted_by_content(images: np.ndarray, labels: np.ndarray):
    order = sorted(range(len(images)), key=lambda i: (images[i].tobytes(), int(labels[i])))
    return images[order], labels[order]


# ------------------------------------------------------------------- pil_to_rgb


def test_pil_to_rgb_grayscale():
    out = pil_to_rgb(Image.new("L", (5, 3), 77))
    assert out.shape == (3, 5, 3)
    assert out.dtype == np.uint8
    assert (out == 77).all()


def test_pil_to_rgb_rgba_drops_alpha_without_compositing():
    out = pil_to_rgb(Image.new("RGBA", (4, 4), (10, 200, 30, 0)))
    assert out.shape == (4, 4, 3)
    assert (out == [10, 200, 30]).all()


def test_pil_to_rgb_palette():
    image = Image.new("P", (3, 1))
    image.putpalette([0, 0, 0, 250, 20, 5, 7, 128, 255] + [0] * (256 * 3 - 9))
    image.putdata([1, 2, 0])
    np.testing.assert_array_equal(pil_to_rgb(image)[0], [[250, 20, 5], [7, 128, 255], [0, 0, 0]])


def test_pil_to_rgb_16_bit_scales_not_clips():
    image = Image.fromarray(np.array([[65535, 32896, 0, 257]], np.uint16))
    assert image.mode == "I;16"
    out = pil_to_rgb(image)
    assert out.shape == (1, 4, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [255, 128, 0, 1])
    assert (out == out[..., :1]).all()


def test_pil_to_rgb_16_bit_png_file(tmp_path):
    Image.fromarray(np.array([[65535, 32896]], np.uint16)).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as image:
        np.testing.assert_array_equal(pil_to_rgb(image)[0], [[255] * 3, [128] * 3])


@pytest.mark.parametrize(
    ("cmyk", "rgb"),
    [
        ((0, 0, 0, 0), (255, 255, 255)),
        ((0, 0, 0, 255), (0, 0, 0)),
        ((0, 255, 255, 0), (255, 0, 0)),
        ((255, 0, 255, 0), (0, 255, 0)),
        ((55, 225, 165, 0), (200, 30, 90)),
    ],
)
def test_pil_to_rgb_cmyk(cmyk, rgb):
    out = pil_to_rgb(Image.new("CMYK", (2, 2), cmyk))
    assert out.shape == (2, 2, 3)
    assert (out == rgb).all()


# ----------------------------------------------- odd files through the pipeline

ODD_FILES = {
    # name: (expected RGB, writer)
    "gray.png": ((90, 90, 90), lambda p: Image.new("L", (40, 40), 90).save(p)),
    "gray.jpg": ((150, 150, 150), lambda p: Image.new("L", (40, 40), 150).save(p, quality=95)),
    "rgba.png": ((10, 200, 30), lambda p: Image.new("RGBA", (40, 40), (10, 200, 30, 60)).save(p)),
    "palette.png": (
        (200, 40, 90),
        lambda p: (
            Image.new("RGB", (40, 40), (200, 40, 90))
            .convert("P", palette=Image.Palette.ADAPTIVE)
            .save(p)
        ),
    ),
    "deep.png": (
        (128, 128, 128),
        lambda p: Image.fromarray(np.full((40, 40), 32896, np.uint16)).save(p),
    ),
    "cmyk.jpg": (
        (200, 30, 90),
        lambda p: Image.new("RGB", (40, 40), (200, 30, 90)).convert("CMYK").save(p, quality=95),
    ),
    "png_named.jpg": (
        (20, 60, 220),
        lambda p: Image.new("RGB", (40, 40), (20, 60, 220)).save(p, format="PNG"),
    ),
}


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    (root / "odd").mkdir()
    for name, (_, writer) in ODD_FILES.items():
        writer(root / "odd" / name)
    (root / "plain").mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (40, 40), colour).save(root / "plain" / f"{i}.png")
    return root


def test_image_folder_reads_odd_files_as_rgb(odd_folder):
    data = ImageFolder(
        odd_folder,
        test_dir=odd_folder,
        image_size=32,
        batch_size=2,
        validation_split=0.0,
        augment=False,
    )
    assert data.report.bad_files == ()
    images, labels = batches(data.test)
    assert images.shape == (len(ODD_FILES) + 2, 32, 32, 3)
    assert images.dtype == np.float32
    expected = {name: colour for name, (colour, _) in ODD_FILES.items()}
    expected |= {"0.png": (255, 0, 0), "1.png": (0, 0, 255)}
    for f, image, label in zip(data.test_files, images, labels, strict=True):
        name = Path(f.path).name
        reference = np.full((32, 32, 3), expected[name], np.float32)
        assert np.abs(image - reference).max() <= 2, name
        assert label == f.label


def test_read_images_matches_the_pipeline(odd_folder):
    data = ImageFolder(
        odd_folder,
        test_dir=odd_folder,
        image_size=(32, 36),
        batch_size=3,
        validation_split=0.0,
        augment=False,
    )
    images, _ = batches(data.test)
    assert images.shape[1:] == (32, 36, 3)
    direct = read_images([f.path for f in data.test_files], (32, 36))
    np.testing.assert_array_equal(images, direct.astype(np.float32))


# ------------------------------------------------------------- ImageFolder errors


def test_missing_data_directory(tmp_path):
    with pytest.raises(KerasFTError) as error:
        ImageFolder(tmp_path / "nowhere", image_size=32)
    assert str(tmp_path / "nowhere") in str(error.value)
    assert "does not exist" in str(error.value)


def test_folder_without_class_folders(tmp_path):
    for i in range(3):
        Image.new("RGB", (32, 32)).save(tmp_path / f"{i}.png")
    with pytest.raises(KerasFTError) as error:
        ImageFolder(tmp_path, image_size=32)
    assert "has no class sub-folders" in str(error.value)
    assert str(tmp_path) in str(error.value)


def test_single_class(tmp_path):
    write_folder(tmp_path, classes=("only",), per_class=4, size=32)
    with pytest.raises(KerasFTError) as error:
        ImageFolder(tmp_path, image_size=32, batch_size=2)
    assert "single class ['only']" in str(error.value)
    assert "at least two class sub-folders" in str(error.value)


def test_a_training_split_smaller_than_one_batch_is_one_partial_batch(folder):
    data = ImageFolder(folder, image_size=32, batch_size=32, validation_split=0.0, quiet=True)
    assert data.steps_per_epoch == 1
    assert [len(y) for _, y in batch_list(data.train)] == [24]
    # A global batch of 64 over two replicas: one batch of 24, 12 each; over five
    # replicas 24 % 5 = 4 images are left out, as in any epoch, so every share is equal.
    assert [len(y) for _, y in batch_list(data.train_dataset(0, 1, 64, replicas=2))] == [24]
    assert [len(y) for _, y in batch_list(data.train_dataset(0, 1, 160, replicas=5))] == [20]


def test_validation_split_that_selects_nothing(folder):
    with pytest.raises(KerasFTError) as error:
        ImageFolder(folder, image_size=32, batch_size=4, validation_split=1e-9)
    message = str(error.value)
    assert "selects no validation image from 24 images" in message
    assert "validation_split=1e-09" in message


def test_validation_split_that_leaves_a_class_without_training_images(tmp_path):
    write_folder(tmp_path, per_class=1, size=32)
    with pytest.raises(KerasFTError, match="leaves no training image in class"):
        ImageFolder(tmp_path, image_size=32, batch_size=1, validation_split=0.999)


def test_test_dir_with_different_classes(tmp_path):
    write_folder(tmp_path / "train", classes=("cat", "dog"), per_class=4, size=32)
    write_folder(tmp_path / "test", classes=("cat", "fox"), per_class=2, size=32)
    with pytest.raises(KerasFTError) as error:
        ImageFolder(
            tmp_path / "train",
            test_dir=tmp_path / "test",
            image_size=32,
            batch_size=2,
            validation_split=0.0,
        )
    message = str(error.value)
    assert "['fox']" in message and "['dog']" in message
    assert str(tmp_path / "test") in message


@pytest.fixture
def folder_with_bad_files(tmp_path) -> tuple[Path, list[Path]]:
    root = write_folder(tmp_path / "train", per_class=10, size=32)
    bad = [root / "cat" / "empty.jpg", root / "dog" / "page.jpg", root / "dog" / "cut.png"]
    bad[0].write_bytes(b"")
    bad[1].write_text("<html><body>Not Found</body></html>")
    png = (root / "dog" / "000.png").read_bytes()
    bad[2].write_bytes(png[: len(png) // 2])
    return root, bad


def test_bad_files_refuse_by_default_listing_all_of_them(folder_with_bad_files):
    root, bad = folder_with_bad_files
    with pytest.raises(KerasFTError) as error:
        ImageFolder(root, image_size=32, batch_size=4, validation_split=0.0)
    message = str(error.value)
    assert "3 file(s)" in message
    for path in bad:
        assert str(path) in message
    assert "skip_bad=True" in message


def test_bad_files_in_test_dir_refuse_unless_skipped(folder):
    test = write_folder(folder.parent / "test", per_class=2, size=32)
    broken = test / "cat" / "broken.jpg"
    broken.write_bytes(b"")
    with pytest.raises(KerasFTError) as error:
        ImageFolder(folder, test_dir=test, image_size=32, batch_size=4, validation_split=0.0)
    assert f"{broken}: empty file" in str(error.value)
    data = ImageFolder(
        folder, test_dir=test, image_size=32, batch_size=4, validation_split=0.0, skip_bad=True
    )
    assert len(data.test_files) == 4
    assert str(broken) not in {f.path for f in data.test_files}


def test_skip_bad_trains_on_the_rest(folder_with_bad_files):
    seed_everything(0)
    root, bad = folder_with_bad_files
    data = ImageFolder(root, image_size=32, batch_size=4, validation_split=0.0, skip_bad=True)
    used = {f.path for f in data.train_files}
    assert len(used) == 20
    assert not used & {str(p) for p in bad}
    images, labels = batches(data.train)
    assert images.shape == (20, 32, 32, 3)
    assert sorted(labels.tolist()) == [0] * 10 + [1] * 10
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(data.train, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# ------------------------------------------------------------------------ split


def files_named(names: list[str]) -> list[ImageFile]:
    return [ImageFile(path=f"/data/{n}", relpath=n, label=0) for n in names]


def test_split_is_stable_when_files_are_added():
    old = files_named([f"cls{i % 5}/img_{i:05d}.jpg" for i in range(2000)])
    new = files_named([f"cls{i % 7}/new_{i:05d}.png" for i in range(1500)])
    train, validation = split_files(old, 0.2, seed=42)
    train2, validation2 = split_files(new[:700] + old + new[700:], 0.2, seed=42)
    before = {f.relpath for f in validation}
    after = {f.relpath for f in validation2}
    assert after & {f.relpath for f in old} == before
    assert {f.relpath for f in train} <= {f.relpath for f in train2}
    assert 0.17 < len(validation) / len(old) < 0.23
    assert len(train) + len(validation) == len(old)


def test_split_is_order_independent_and_nested():
    files = files_named([f"c/{i}.jpg" for i in range(500)])
    _, forward = split_files(files, 0.2, seed=1)
    _, backward = split_files(files[::-1], 0.2, seed=1)
    assert {f.relpath for f in forward} == {f.relpath for f in backward}
    _, larger = split_files(files, 0.3, seed=1)
    assert {f.relpath for f in forward} < {f.relpath for f in larger}


def test_split_same_seed_same_split_other_seed_different():
    files = files_named([f"c{i % 3}/{i}.jpg" for i in range(400)])
    first = split_files(files, 0.25, seed=7)
    again = split_files(files, 0.25, seed=7)
    other = split_files(files, 0.25, seed=8)
    assert first == again
    assert {f.relpath for f in first[1]} != {f.relpath for f in other[1]}


def test_stable_fraction_is_a_fixed_number_in_unit_interval():
    values = [stable_fraction(42, f"c/{i}.png") for i in range(200)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert stable_fraction(42, "c/0.png") == values[0]
    assert stable_fraction(43, "c/0.png") != values[0]


def patients(split) -> list[set[str]]:
    """The patients of each side of a split of files named `<class>/patientP_scanI.png`."""
    return [{re.search(r"patient\d+", f.relpath).group(0) for f in side} for side in split]


def test_validation_groups_hold_out_whole_groups():
    """Scans of 40 patients, in both classes: split by file, most patients both train and
    validate; by `validation_groups`, each patient is on one side, whichever part of the path
    names it (the match, or its first parenthesised group)."""
    names = [f"patient{p}_scan{i}.png" for p in range(40) for i in range(5)]
    files = files_named([f"{c}/{name}" for c in ("ill", "well") for name in names])
    train, validation = patients(split_files(files, 0.2, seed=3))
    assert len(train & validation) > 20
    grouped = split_files(files, 0.2, seed=3, groups=r"patient\d+")
    train, validation = patients(grouped)
    assert not train & validation and len(train | validation) == 40
    assert 3 <= len(validation) <= 14  # about a fifth of the 40 patients
    assert split_files(files, 0.2, seed=3, groups=r"/(patient\d+)_") == grouped
    assert patients(split_files(files, 0.2, seed=4, groups=r"patient\d+"))[1] != validation


def test_validation_groups_refuse_a_file_without_a_group_and_a_bad_pattern(tmp_path):
    root = write_folder(tmp_path / "scans", ("ill", "well"), per_class=4, size=32)
    for i, path in enumerate(sorted(root.glob("*/*.png"))):
        path.rename(path.with_name(f"patient{i % 3}_{path.name}"))
    (root / "well" / "patient2_001.png").rename(root / "well" / "unlabelled.png")
    with pytest.raises(KerasFTError) as error:
        ImageFolder(root, image_size=32, validation_groups=r"patient\d+", quiet=True)
    message = str(error.value)
    assert r"validation_groups='patient\d+' finds no group in 'well/unlabelled.png'" in message
    assert "Change the pattern" in message
    with pytest.raises(KerasFTError, match="Invalid `validation_groups`: expected a regular"):
        ImageFolder(root, image_size=32, validation_groups="patient(", quiet=True)
    (root / "well" / "unlabelled.png").rename(root / "well" / "patient2_001.png")
    with pytest.raises(KerasFTError, match=r"selects no validation image from 8 images in 3 gr"):
        ImageFolder(root, image_size=32, validation_groups=r"patient\d+", quiet=True)  # seed 42
    with pytest.raises(KerasFTError) as error:  # every group validates: no class trains
        ImageFolder(
            root, image_size=32, validation_groups=r"patient\d+", validation_split=0.99, quiet=True
        )
    assert str(error.value) == (
        r"validation_split=0.99 by validation_groups='patient\d+' leaves no training image in "
        "class(es) ['ill', 'well']. Add images, lower validation_split, or choose another seed "
        "or grouping."
    )
    data = ImageFolder(
        root, image_size=32, validation_groups=r"patient\d+", validation_split=0.5, quiet=True
    )
    held_out = data.groups[1]
    assert data.groups == (3, held_out) and 0 < held_out < 3
    assert f"validation ({held_out} of 3 groups)" in data.split_summary


def test_image_folder_split_stable_when_images_are_added(tmp_path):
    root = write_folder(tmp_path / "d", per_class=15, size=32)
    before = ImageFolder(root, image_size=32, batch_size=2, validation_split=0.3, seed=5)
    for name in ("cat", "dog"):
        for i in range(15, 30):
            shutil.copy(root / name / "000.png", root / name / f"{i:03d}.png")
    after = ImageFolder(root, image_size=32, batch_size=2, validation_split=0.3, seed=5)
    old = {f.relpath for f in before.report.files}
    assert {f.relpath for f in after.validation_files} & old == {
        f.relpath for f in before.validation_files
    }
    assert len(after.validation_files) > len(before.validation_files)


# ----------------------------------------------------------------- augmentation


@pytest.fixture(scope="module")
def aug_folder(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("aug")
    return (
        write_folder(base / "train", per_class=10, size=36, seed=3),
        write_folder(base / "test", per_class=3, size=36, seed=4),
    )


def make_data(root, **kwargs) -> ImageFolder:
    values = dict(image_size=32, batch_size=4, validation_split=0.25, seed=11)
    return ImageFolder(root, **(values | kwargs))


def test_same_seed_gives_identical_batches(aug_folder):
    seed_everything(0)
    first = batch_list(make_data(aug_folder[0]).train_dataset(0, 2))
    second = batch_list(make_data(aug_folder[0]).train_dataset(0, 2))
    assert len(first) == 2 * make_data(aug_folder[0]).steps_per_epoch
    assert_same_batches(first, second)


def test_epochs_differ_and_each_holds_every_training_image_once(aug_folder):
    seed_everything(0)
    data = make_data(aug_folder[0])
    steps = data.steps_per_epoch
    both = batch_list(data.train_dataset(0, 2))
    epoch0 = np.concatenate([x for x, _ in both[:steps]])
    epoch1 = np.concatenate([x for x, _ in both[steps:]])
    assert epoch0.shape == epoch1.shape == (len(data.train_files), 32, 32, 3)
    assert not np.array_equal(epoch0, epoch1)
    # Not only a new order: every image is augmented anew in each epoch.
    for image in epoch1:
        assert not any(np.array_equal(image, seen) for seen in epoch0)
    expected = sorted(f.label for f in data.train_files)
    for part in (both[:steps], both[steps:]):
        assert sorted(np.concatenate([y for _, y in part]).tolist()) == expected


def test_resumed_epoch_equals_the_same_epoch_of_a_full_run(aug_folder):
    seed_everything(0)
    data = make_data(aug_folder[0])
    full = batch_list(data.train_dataset(0, 2))
    resumed = batch_list(make_data(aug_folder[0]).train_dataset(1, 1))
    assert_same_batches(full[data.steps_per_epoch :], resumed)


def test_one_pipeline_serves_every_epoch_each_ending_in_its_own_short_batch(
    aug_folder, monkeypatch
):
    """Sixty epochs are one pipeline: its augmentation is traced once, not once per epoch
    (that took 0.1 s an epoch); an epoch's short last batch never takes the next's images."""
    from keras_ft.data import folder

    traced, augment = [], folder.augment

    def counted(*args):
        traced.append(1)
        return augment(*args)

    monkeypatch.setattr(folder, "augment", counted)
    data = make_data(aug_folder[0], batch_size=8)
    assert len(data.train_files) % 8 != 0
    sizes = [len(y) for _, y in batch_list(data.train_dataset(0, 60))]
    per_epoch = [8] * (len(data.train_files) // 8) + [len(data.train_files) % 8]
    assert sizes == per_epoch * 60 and len(traced) == 1


def test_in_file_order_keeps_each_epochs_augmentation_but_not_its_order(aug_folder):
    """Phase 1's augmented copies (`head_copies`): epoch k's images, augmented as epoch k
    augments them, in file order."""
    data = make_data(aug_folder[0])
    in_order = batch_list(data.train_dataset(2, 2, in_file_order=True))
    assert [len(y) for _, y in in_order[: data.steps_per_epoch]] == [
        len(y) for _, y in batch_list(data.train_dataset(0, 1))
    ]
    images = np.concatenate([x for x, _ in in_order])
    labels = np.concatenate([y for _, y in in_order])
    count = len(data.train_files)
    for copy, epoch in enumerate((2, 3)):
        shuffled = batch_list(data.train_dataset(epoch, 1))
        order = data.epoch_order(epoch)
        in_epoch = slice(copy * count, (copy + 1) * count)
        np.testing.assert_array_equal(
            images[in_epoch][order], np.concatenate([x for x, _ in shuffled])
        )
        np.testing.assert_array_equal(labels[in_epoch], [f.label for f in data.train_files])
    assert not np.array_equal(images[:count], images[count:])  # each epoch its own


def test_other_seed_gives_other_batches(aug_folder):
    seed_everything(0)
    a = batch_list(make_data(aug_folder[0], validation_split=0.0).train_dataset(0, 1))
    b = batch_list(make_data(aug_folder[0], validation_split=0.0, seed=12).train_dataset(0, 1))
    assert not np.array_equal(np.concatenate([x for x, _ in a]), np.concatenate([x for x, _ in b]))


def test_augmentation_changes_images_but_keeps_the_range(aug_folder):
    seed_everything(0)
    data = make_data(aug_folder[0])
    images, labels = batches(data.train)
    decoded = read_images([f.path for f in data.train_files], (32, 32)).astype(np.float32)
    assert images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 255.0
    for image in images:
        assert not any(np.array_equal(image, d) for d in decoded)


def test_without_augment_training_images_are_the_decoded_images(aug_folder):
    seed_everything(0)
    data = make_data(aug_folder[0], augment=False)
    images, labels = batches(data.train)
    decoded = read_images([f.path for f in data.train_files], (32, 32)).astype(np.float32)
    decoded_labels = np.array([f.label for f in data.train_files])
    got = sorted_by_content(images, labels)
    want = sorted_by_content(decoded, decoded_labels)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_validation_and_test_are_never_augmented(aug_folder):
    seed_everything(0)
    train, test = aug_folder
    data = make_data(train, test_dir=test, augment=True, rotation=0.5, zoom=0.5, contrast=0.5)
    assert data.validation_files and data.test_files
    for dataset, files in ((data.validation, data.validation_files), (data.test, data.test_files)):
        first = batches(dataset)
        second = batches(dataset)
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])
        decoded = read_images([f.path for f in files], (32, 32)).astype(np.float32)
        np.testing.assert_array_equal(first[0], decoded)
        np.testing.assert_array_equal(first[1], [f.label for f in files])


def test_no_validation_dataset_without_split_and_no_test_without_test_dir(aug_folder):
    data = make_data(aug_folder[0], validation_split=0.0)
    assert data.validation is None
    assert data.test is None


def test_batches_depend_on_the_data_seed_alone(aug_folder):
    try:
        tf.random.set_seed(1)
        first = batch_list(make_data(aug_folder[0]).train_dataset(0, 1))
        tf.random.set_seed(2)
        second = batch_list(make_data(aug_folder[0]).train_dataset(0, 1))
    finally:
        seed_everything(0)
    assert_same_batches(first, second)


def test_splits_over_the_memory_budget_go_to_a_temporary_file_with_the_same_batches(aug_folder):
    import gc
    import os

    seed_everything(0)
    train, test = aug_folder
    in_memory = make_data(train, test_dir=test)
    spilled = make_data(train, test_dir=test, memory_budget=0)
    assert_same_batches(
        batch_list(in_memory.train_dataset(0, 2)), batch_list(spilled.train_dataset(0, 2))
    )
    assert_same_batches(batch_list(in_memory.validation), batch_list(spilled.validation))
    assert_same_batches(batch_list(in_memory.test), batch_list(spilled.test))
    assert not isinstance(in_memory._images("train", in_memory.train_files), np.memmap)
    store = spilled._images("train", spilled.train_files)
    assert isinstance(store, np.memmap)
    folder = os.path.dirname(store.filename)
    assert os.path.isfile(os.path.join(folder, "test.npy"))
    del store, spilled
    gc.collect()
    assert not os.path.exists(folder)  # removed with the ImageFolder


def test_every_split_runs_without_the_tf_data_autotuner(split_folders):
    # Deleting an iterator waits for the autotuner's sleeping thread: `fit` ended 10-15 s late.
    train, test = split_folders
    data = ImageFolder(train, test_dir=test, image_size=32, batch_size=4, validation_split=0.25)
    splits = (data.train_dataset(0, 2), data.validation, data.test, data.unaugmented_train())
    assert [split.options().autotune.enabled for split in splits] == [False] * 4


def test_translation_shifts_each_image_by_its_own_stateless_amount():
    from keras_ft.config import DataConfig
    from keras_ft.data.folder import augment

    image = np.zeros((32, 32, 3), np.float32)
    image[12:20, 12:20] = 255.0  # a bright square in the middle
    still = dict(flip=False, rotation=0.0, zoom=0.0, contrast=0.0)
    shifted = DataConfig("d", image_size=(32, 32), translation=0.2, **still)

    def centre(seed, config=shifted):
        out = augment(tf.constant(image), tf.constant(seed, tf.int64), config).numpy()
        rows, cols = np.nonzero(out[..., 0] > 127)
        return out, np.array([rows.mean(), cols.mean()]) - 15.5

    moves = [centre([5, i])[1] for i in range(8)]
    assert all(np.abs(move).max() <= 0.2 * 32 + 0.5 for move in moves)  # at most 20% either way
    assert len({tuple(np.round(move, 3)) for move in moves}) == 8  # each element its own shift
    assert max(np.abs(move).max() for move in moves) > 2  # and they do move
    np.testing.assert_array_equal(centre([5, 3])[0], centre([5, 3])[0])  # same key, same image
    unchanged = DataConfig("d", image_size=(32, 32), **still)
    np.testing.assert_array_equal(centre([5, 3], unchanged)[0], image)


def test_flip_auto_does_not_flip_until_told(aug_folder):
    seed_everything(0)
    still = dict(rotation=0.0, zoom=0.0, contrast=0.0)
    auto = make_data(aug_folder[0], flip="auto", **still)
    none = make_data(aug_folder[0], flip=False, **still)
    assert_same_batches(batch_list(auto.train_dataset(0, 1)), batch_list(none.train_dataset(0, 1)))
    flipped = make_data(aug_folder[0], flip=True, **still)
    told = auto.with_augmentation(flip=True).train_dataset(0, 1)
    assert_same_batches(batch_list(told), batch_list(flipped.train_dataset(0, 1)))
    with pytest.raises(KerasFTError, match="Invalid `flip`: expected True, False or 'auto'"):
        make_data(aug_folder[0], flip="yes")
    with pytest.raises(KerasFTError, match="Invalid `translation`"):
        make_data(aug_folder[0], translation=0.5)


def test_quarter_turns_turn_each_image_by_its_own_multiple_of_90_degrees(aug_folder):
    still = dict(flip=False, rotation=0.0, zoom=0.0, contrast=0.0)
    plain = batch_list(make_data(aug_folder[0], **still).train_dataset(0, 2))
    turned = batch_list(make_data(aug_folder[0], quarter_turns=True, **still).train_dataset(0, 2))
    turns = []
    for (images, labels), (turned_images, turned_labels) in zip(plain, turned, strict=True):
        np.testing.assert_array_equal(labels, turned_labels)
        for image, turned_image in zip(images, turned_images, strict=True):
            found = [k for k in range(4) if np.array_equal(np.rot90(image, k), turned_image)]
            assert found, "an image came out other than a quarter turn of itself"
            turns.append(found[0])
    assert set(turns) == {0, 1, 2, 3}  # 30 images: each turn drawn
    again = make_data(aug_folder[0], quarter_turns=True, **still).train_dataset(0, 2)
    assert_same_batches(batch_list(again), turned)  # from the seed alone
    # "auto" turns nothing until fit decides, and decided True is quarter_turns=True.
    auto = make_data(aug_folder[0], quarter_turns="auto", **still)
    assert auto.decides == ("quarter_turns",)
    assert_same_batches(batch_list(auto.train_dataset(0, 2)), plain)
    told = auto.with_augmentation(quarter_turns=True).train_dataset(0, 2)
    assert_same_batches(batch_list(told), turned)
    assert make_data(aug_folder[0], quarter_turns="auto", augment=False).decides == ()
    with pytest.raises(KerasFTError) as refused:
        make_data(aug_folder[0], quarter_turns=True, image_size=(32, 48))
    assert str(refused.value) == (
        "Invalid `quarter_turns`: expected False or 'auto' for images that are not square "
        "(image_size (32, 48)): a quarter turn swaps height and width, received True. Pass "
        "a square image_size, e.g. 224."
    )


def test_image_folder_takes_every_data_config_field_with_its_default(folder):
    import inspect

    from keras_ft.config import DataConfig, defaults_of

    parameters = inspect.signature(ImageFolder).parameters
    for name, default in defaults_of(DataConfig).items():
        assert parameters[name].default == default, name
    assert "\n    translation: maximum shift" in inspect.getdoc(ImageFolder)
    data = ImageFolder(folder, image_size=32, batch_size=4, translation=0.1, quiet=True)
    assert data.config == DataConfig(
        directory=str(folder), image_size=32, batch_size=4, translation=0.1
    )
    with pytest.raises(TypeError, match="unexpected keyword argument 'rotations'"):
        ImageFolder(folder, rotations=0.1)


def from_directory(folder, **options) -> tf.data.Dataset:
    return keras.utils.image_dataset_from_directory(
        folder, image_size=(32, 32), batch_size=8, verbose=False, **options
    )


def test_from_dataset_reads_the_batches_into_a_fixed_order(folder):
    """Two shuffles of one folder give the same images, labels and order."""
    first = ImageFolder.from_dataset(from_directory(folder, seed=1), augment=False)
    second = ImageFolder.from_dataset(from_directory(folder, seed=2), augment=False)
    assert first.class_names == ("cat", "dog")  # the dataset's `class_names`
    assert first.image_size == (32, 32) and first.config.batch_size == 8
    assert (len(first.train_files), first.validation, first.test) == (24, None, None)
    images, labels = batches(first.unaugmented_train())
    assert images.dtype == np.float32 and sorted(labels) == [0] * 12 + [1] * 12
    assert_same_batches(batch_list(first.train), batch_list(second.train))
    assert first.has_files is False and ImageFolder(folder, quiet=True).has_files is True


def test_from_dataset_takes_one_hot_labels_and_names_classes_without_class_names(folder):
    one_hot = from_directory(folder, label_mode="categorical", shuffle=False)
    plain = one_hot.map(lambda images, labels: (images, labels))  # `class_names` is gone
    data = ImageFolder.from_dataset(plain)
    assert data.class_names == ("0", "1")
    _, labels = batches(data.unaugmented_train())
    assert sorted(labels) == [0] * 12 + [1] * 12


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d.unbatch(), "batches of RGB images, shape (batch, height, width, 3)"),
        (lambda d: d.map(lambda x, y: (x / 255.0, y)), "pixel values from 0 to 255"),
        (lambda d: d.map(lambda x, y: (x, tf.cast(y[:, None], tf.float32))), "label_mode='int'"),
        (lambda d: d.map(lambda x, y: (x, tf.one_hot(y, 2) * 0.9)), "one-hot"),
        (lambda d: d.map(lambda x, y: x), "(images, labels) batches"),
        (lambda d: d.filter(lambda x, y: False), "holds no images"),
    ],
)
def test_from_dataset_refuses_what_it_cannot_read_saying_what_it_takes(folder, change, expected):
    with pytest.raises(KerasFTError, match=re.escape(expected)):
        ImageFolder.from_dataset(change(from_directory(folder)))
