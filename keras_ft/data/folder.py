"""Labelled image folders served as tf.data pipelines: `ImageFolder`, `augment`, held-out folders.

Images are read and resized once (see `keras_ft.data.pipeline`), cached as
uint8, and only then augmented, with stateless random ops keyed on (seed,
epoch, element). Two runs with the same seed therefore see the same augmented
images, each epoch sees different ones, and the `map` stays parallel under op
determinism.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import re
import shutil
import tempfile
import warnings
import weakref

import numpy as np
import tensorflow as tf

from keras_ft.config import (
    DECIDED_FROM_DATA,
    DataConfig,
    defaults_of,
    document,
    merge_options,
    takes_options,
)
from keras_ft.data.pipeline import (
    AUTOTUNE,
    FIXED_PARALLELISM,
    decoded_dataset,
    evaluation_batches,
    group_of,
    read_batches,
    split_files,
)
from keras_ft.data.scan import ImageFile, ScanReport, scan_folder
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.text import printable


def augment(image: tf.Tensor, seed: tf.Tensor, config: DataConfig) -> tf.Tensor:
    """Randomly flip, turn, rotate, zoom, shift and change contrast, statelessly from `seed`
    (shape [2]).

    Zooming in and shifting together make a random crop. `flip="auto"` and
    `quarter_turns="auto"` do nothing: `fit` decides them before phase 1 and trains
    on `with_augmentation(flip=..., quarter_turns=...)` (`keras_ft.training.resolve`).
    """
    image = tf.cast(image, tf.float32)
    flip_seed, angle_seed, zoom_seed, contrast_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    if config.flip is True:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if config.quarter_turns is True:  # its own stream, as the shift's below
        turns_seed = tf.random.experimental.stateless_fold_in(seed, 2)
        turns = tf.random.stateless_uniform([], turns_seed, 0, 4, dtype=tf.int32)
        image = tf.ensure_shape(tf.image.rot90(image, turns), image.shape)
    if config.rotation or config.zoom or config.translation:
        turn = config.rotation * 2.0 * math.pi
        angle = tf.random.stateless_uniform([], angle_seed, -turn, turn)
        scale = tf.random.stateless_uniform([], zoom_seed, 1.0 - config.zoom, 1.0 + config.zoom)
        height, width = config.image_size
        # Its own stream (the four above stay as they were before translation existed).
        shift_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        shift = tf.random.stateless_uniform([2], shift_seed, -1.0, 1.0) * config.translation
        dx, dy = shift[0] * width, shift[1] * height
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        a0, a1 = tf.cos(angle) / scale, -tf.sin(angle) / scale
        b0, b1 = tf.sin(angle) / scale, tf.cos(angle) / scale
        # Output pixel (x, y) samples the input at A @ (x - cx - dx, y - cy - dy) + (cx, cy).
        x0, y0 = cx + dx, cy + dy
        transform = tf.stack(
            [a0, a1, cx - a0 * x0 - a1 * y0, b0, b1, cy - b0 * x0 - b1 * y0, 0.0, 0.0]
        )
        image = tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None],
            transforms=transform[None],
            output_shape=[height, width],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )[0]
    if config.contrast:
        factor = tf.random.stateless_uniform(
            [], contrast_seed, 1.0 - config.contrast, 1.0 + config.contrast
        )
        mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
        image = tf.clip_by_value((image - mean) * factor + mean, 0.0, 255.0)
    return image


def _refuse_bad_files(report: ScanReport, skip_bad: bool) -> None:
    bad = report.bad_files
    if bad and not skip_bad:
        listing = "\n".join(f"  {p.path}: {p.reason}" for p in bad)
        raise KerasFTError(
            f"{len(bad)} file(s) in '{report.root}' cannot be used:\n{listing}\n"
            "Fix or remove them, or pass skip_bad=True (--skip-bad) to train on the rest."
        )


def _warn_about_run_directories(report: ScanReport) -> None:
    for note in report.problems:
        if note.kind == "run_directory":
            warnings.warn(
                printable(
                    f"Skipped '{note.path}': a keras_ft run directory (an output), not used "
                    "as training data. Write outputs outside the data folder."
                ),
                stacklevel=3,
            )


DATA_DEFAULTS = defaults_of(DataConfig)  # every field but `directory`
DATA_OPTIONS = tuple(DATA_DEFAULTS)
# What a dataset settles itself (its images are read, sized and batched, and it has no files
# to scan, split or hold out): the DataConfig fields `ImageFolder.from_dataset` does not take.
SET_BY_A_DATASET = (
    "test_dir", "image_size", "batch_size", "validation_split", "validation_groups", "skip_bad",
)  # fmt: skip
DATASET_OPTIONS = tuple(n for n in DATA_OPTIONS if n not in SET_BY_A_DATASET)
DATASET = "<tf.data.Dataset>"  # the `directory` of an ImageFolder made by `from_dataset`


class ImageFolder:
    """A labelled image folder, split and served as tf.data pipelines.

    Args:
        directory: training folder, one sub-folder per class.
        {options}
        quiet: no scan progress on stderr.
        memory_budget: bytes of decoded images a split may hold in memory; a
            larger split is kept in a memory-mapped temporary file instead.

    Example:

    >>> data = ImageFolder("flowers/train", test_dir="flowers/test", image_size=224)
    >>> data.class_names
    ('daisy', 'dandelion', 'roses', 'sunflowers', 'tulips')
    """

    has_files = True  # False from `from_dataset`: no files to fingerprint or read again

    @takes_options((DataConfig, DATA_OPTIONS))
    def __init__(self, directory, *, quiet=False, memory_budget=4 * 1024**3, **options):
        options = merge_options(options, DATA_DEFAULTS, "ImageFolder")
        if options["test_dir"] is not None:
            options["test_dir"] = str(options["test_dir"])
        self.config = DataConfig(directory=str(directory), **options)
        test_dir, skip_bad, seed = self.config.test_dir, self.config.skip_bad, self.config.seed
        self.report = scan_folder(directory, quiet=quiet)
        _warn_about_run_directories(self.report)
        _refuse_bad_files(self.report, skip_bad)
        self.class_names = self.report.class_names
        if len(self.class_names) < 2:
            raise KerasFTError(
                f"Data directory '{directory}' has a single class {list(self.class_names)}. "
                "A classifier needs at least two class sub-folders."
            )
        empty = [name for name, count in self.report.counts().items() if count == 0]
        if empty:
            raise KerasFTError(
                f"Class folder(s) {empty} in '{directory}' have no usable images. "
                "Add images or remove the empty folders."
            )
        self.train_files, self.validation_files = split_files(
            self.report.files, self.config.validation_split, seed, self.config.validation_groups
        )
        self._check_split_sizes()
        self._warn_if_imbalanced()
        self.test_report = None
        self.test_files = []
        if test_dir is not None:
            self.test_report = scan_folder(
                test_dir, class_names=self.class_names, training=self.report, quiet=quiet
            )
            _refuse_bad_files(self.test_report, skip_bad)
            if self.test_report.warnings:
                warnings.warn(self.test_report.leakage_warning(directory), stacklevel=2)
            self.test_files = list(self.test_report.files)
        self._cache = {}
        self.memory_budget = memory_budget
        self._spill_dir = None

    @classmethod
    @takes_options((DataConfig, DATASET_OPTIONS))
    def from_dataset(cls, dataset, *, class_names=None, **options) -> ImageFolder:
        """An ImageFolder of a `tf.data.Dataset` of (images, labels) batches, read into memory.

        Such as `keras.utils.image_dataset_from_directory` returns: RGB images
        of one size with pixel values from 0 to 255, and int labels
        (`label_mode="int"`, its default) or one-hot ones
        (`label_mode="categorical"`). The images are read once, rounded to
        uint8, and put in a fixed order (by label, then content), so a dataset
        that shuffles trains the same way every time. The image size and the
        batch size (its first batch's) are the dataset's. Every image trains:
        there is no validation or test split (`FineTuner.evaluate` takes a
        held-out dataset).

        What a folder gives and a dataset cannot: no scan of the files (broken
        images, the same image in two splits), and no record of the data: the
        run directory `FineTuner.save` writes has no data fingerprint, so
        `keras-ft reproduce` cannot re-train it.

        Args:
            dataset: a `tf.data.Dataset` of `(images, labels)` batches.
            class_names: the class names, label 0 first. Default: the
                dataset's `class_names` attribute where it has one, else
                `"0"` to `"K-1"` for K classes.
        {options}

        Example:

        >>> dataset = keras.utils.image_dataset_from_directory("flowers/train")
        >>> data = ImageFolder.from_dataset(dataset, flip=True)
        """
        options = merge_options(
            options, {n: DATA_DEFAULTS[n] for n in DATASET_OPTIONS}, "ImageFolder.from_dataset"
        )
        images, labels, batch_size, num_classes = read_batches(dataset)
        names = class_names or getattr(dataset, "class_names", None) or range(num_classes)
        names = tuple(map(str, names))
        counts = np.bincount(labels, minlength=len(names))
        if len(counts) > len(names) or len(names) < 2 or not counts.all():
            raise KerasFTError(
                f"Cannot name the dataset's classes: its labels are {sorted(set(labels.tolist()))}"
                f", the class names {list(names)}. Each label needs a name, each class images, "
                "and a classifier at least two classes: pass class_names, one per label."
            )
        hashes = [hashlib.sha256(image.tobytes()).hexdigest() for image in images]
        order = sorted(range(len(images)), key=lambda i: (labels[i], hashes[i]))
        files = [
            ImageFile(f"{n:06d}", f"{n:06d}", int(labels[i]), hashes[i])
            for n, i in enumerate(order)
        ]
        data = cls.__new__(cls)
        data.config = DataConfig(
            directory=DATASET,
            image_size=images.shape[1:3],
            batch_size=batch_size,
            validation_split=0.0,
            **options,
        )
        data.report = ScanReport(DATASET, names, tuple(files))
        data.class_names, data.has_files = names, False
        data.train_files, data.validation_files = files, []
        data.test_report, data.test_files = None, []
        data._cache, data.memory_budget, data._spill_dir = {"train": images[order]}, 0, None
        data._warn_if_imbalanced()
        return data

    @property
    def decides(self) -> tuple[str, ...]:
        """The augmentation options `fit` decides from the data (`"auto"`, augmentation on)."""
        if not self.config.augment:
            return ()
        return tuple(o for o in DECIDED_FROM_DATA if getattr(self.config, o) == "auto")

    def with_augmentation(self, **changes) -> ImageFolder:
        """A copy with other augmentation settings (e.g. `flip="auto"`), same images and split.

        The copy shares the decoded images already read (augmentation happens
        after them).
        """
        other = copy.copy(self)
        other.config = dataclasses.replace(self.config, **changes)
        other._source = self  # keeps the shared store (and any spill folder) alive
        return other

    def _warn_if_imbalanced(self) -> None:
        counts = self.report.counts()
        if max(counts.values()) > 3 * min(counts.values()):
            largest = max(counts, key=counts.get)
            smallest = min(counts, key=counts.get)
            warnings.warn(
                printable(
                    f"Imbalanced classes in '{self.config.directory}': '{largest}' has "
                    f"{counts[largest]} images, '{smallest}' {counts[smallest]} (more than 3x). "
                    "Consider fit(..., class_weight='balanced') (--class-weight balanced) and "
                    "watch the per-class recall in the report."
                ),
                stacklevel=3,
            )

    def _check_split_sizes(self) -> None:
        config = self.config
        counts = {name: 0 for name in self.class_names}
        for f in self.train_files:
            counts[self.class_names[f.label]] += 1
        without = [name for name, count in counts.items() if count == 0]
        no_validation = config.validation_split > 0 and not self.validation_files
        if not (without or no_validation):
            return
        split, grouped = f"validation_split={config.validation_split}", self.groups
        if grouped:
            split += f" by validation_groups='{config.validation_groups}'"
        if without:
            raise KerasFTError(
                f"{split} leaves no training image in class(es) {without}. Add images, lower "
                "validation_split" + (", or choose another seed or grouping." if grouped else ".")
            )
        raise KerasFTError(  # no_validation
            f"{split} selects no validation image from {len(self.report.files)} images"
            + (f" in {grouped[0]} group(s)" if grouped else "")
            + ". Raise validation_split or pass 0 to skip validation."
        )

    @property
    def split_summary(self) -> str:
        """`"241 train, 59 validation, 100 test"`, with `(3 of 12 groups)` after the
        validation count when `validation_groups` holds out groups."""
        grouped = self.groups
        groups = f" ({grouped[1]} of {grouped[0]} groups)" if grouped else ""
        return (
            f"{len(self.train_files)} train, {len(self.validation_files)} validation{groups}, "
            f"{len(self.test_files)} test"
        )

    @property
    def groups(self) -> tuple[int, int] | None:
        """`(groups, held out)`: how many groups `validation_groups` finds, and how many of
        them validate; `None` without `validation_groups`."""
        if self.config.validation_groups is None:
            return None
        pattern = re.compile(self.config.validation_groups)
        held_out = {group_of(f, pattern) for f in self.validation_files}
        return len(held_out | {group_of(f, pattern) for f in self.train_files}), len(held_out)

    @property
    def skipped(self) -> list[dict[str, str]]:
        """What `skip_bad=True` left out, each with the reason, for the run record.

        Returns:
            One `{"path": ..., "reason": ...}` dict per file (or empty test class
            folder) that cannot be used: the training folder's first, then the
            test folder's. Empty when nothing was skipped.
        """
        reports = [r for r in (self.report, self.test_report) if r is not None]
        return [{"path": p.path, "reason": p.reason} for r in reports for p in r.bad_files]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.image_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_files) / self.config.batch_size)

    def _images(self, name: str, files: list[ImageFile]) -> np.ndarray:
        """The split's images, decoded and resized once, as one `(N, H, W, 3)` uint8 array.

        The array lives in memory while it fits `memory_budget`; a larger one
        is a memory-mapped file in a temporary folder (removed with this
        object), so memory stays bounded whatever the data set's size.
        """
        if name not in self._cache:
            shape = (len(files), *self.config.image_size, 3)
            if math.prod(shape) <= self.memory_budget:
                store = np.empty(shape, np.uint8)
            else:
                if self._spill_dir is None:
                    self._spill_dir = tempfile.mkdtemp(prefix="keras_ft_images_")
                    weakref.finalize(self, shutil.rmtree, self._spill_dir, True)
                path = os.path.join(self._spill_dir, f"{name}.npy")
                store = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
            start = 0
            for images, _ in decoded_dataset(files, self.config.image_size).batch(256):
                store[start : start + len(images)] = images.numpy()
                start += len(images)
            self._cache[name] = store
        return self._cache[name]

    def _gathered(self, name: str, files: list[ImageFile], order, batch: int):
        """(images uint8, labels, indices) batches of `files` taken from the store in `order`
        (an array, or a tensor where this runs inside a dataset function)."""
        images = self._images(name, files)
        labels = tf.constant([f.label for f in files], tf.int32)

        def gather(indices):
            taken = tf.numpy_function(lambda i: images[i], [indices], tf.uint8, stateful=False)
            taken.set_shape([None, *self.config.image_size, 3])
            return taken, tf.gather(labels, indices), indices

        indices = tf.data.Dataset.from_tensor_slices(tf.cast(order, tf.int64))
        return indices.batch(batch).map(gather).with_options(FIXED_PARALLELISM)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The order of the training files in `epoch`: a permutation fixed by (seed, epoch)."""
        rng = np.random.default_rng([self.config.seed, epoch])
        return rng.permutation(len(self.train_files))

    def train_dataset(
        self,
        start_epoch: int = 0,
        epochs: int = 1,
        batch_size: int | None = None,
        replicas=1,
        in_file_order=False,
    ) -> tf.data.Dataset:
        """Training batches for epochs `start_epoch` to `start_epoch + epochs - 1`.

        Each epoch's order and augmentation follow from the data seed and the
        epoch number alone (not TensorFlow's global seed), so epoch 7 is the
        same whether training started at epoch 0 or resumed there. Batches
        hold `batch_size` images (default: the configured, per-replica size;
        training under a `tf.distribute` strategy asks for the global size).
        With `replicas` > 1 each epoch leaves out the last `len % replicas`
        images of its order, so that every batch splits evenly over replicas.
        One pipeline serves every epoch (its functions are traced once, not per
        epoch); an epoch's last batch may be short, and never holds the next's.
        `in_file_order=True` keeps each epoch's augmentation but not its order:
        the images come in file order (phase 1's augmented copies, `head_copies`).
        """
        config = self.config
        batch_size = batch_size or config.batch_size
        count = len(self.train_files)
        numbers = np.arange(start_epoch, start_epoch + epochs, dtype=np.int64)
        if in_file_order:
            orders = np.tile(np.arange(count), (len(numbers), 1))
        else:
            orders = np.stack([self.epoch_order(epoch) for epoch in numbers])
        orders = orders[:, : count - count % replicas]
        self._images("train", self.train_files)  # decoded here, not in a dataset function

        def one_epoch(epoch, order):
            def prepare(image, label, index):
                if config.augment:
                    seed = tf.stack([tf.constant(config.seed, tf.int64), epoch * count + index])
                    return augment(image, seed, config), label
                return tf.cast(image, tf.float32), label

            elements = self._gathered("train", self.train_files, order, 256).unbatch()
            elements = elements.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
            return elements.batch(batch_size)

        each_epoch = tf.data.Dataset.from_tensor_slices((numbers, orders))
        return each_epoch.with_options(FIXED_PARALLELISM).flat_map(one_epoch).prefetch(AUTOTUNE)

    def _evaluation_dataset(self, name: str, files: list[ImageFile]) -> tf.data.Dataset | None:
        """Float32 batches of a split in file order, never augmented."""
        if not files:
            return None
        batches = self._gathered(name, files, np.arange(len(files)), self.config.batch_size)
        return batches.map(lambda images, labels, _: (tf.cast(images, tf.float32), labels))

    def unaugmented_train(self) -> tf.data.Dataset:
        """The training split in file order, without augmentation (for feature caching)."""
        return self._evaluation_dataset("train", self.train_files)

    @property
    def train(self) -> tf.data.Dataset:
        """One epoch (epoch 0) of shuffled, augmented training batches."""
        return self.train_dataset(0, 1)

    @property
    def validation(self) -> tf.data.Dataset | None:
        """Validation batches (no augmentation), or `None` when `validation_split` is 0."""
        return self._evaluation_dataset("validation", self.validation_files)

    @property
    def test(self) -> tf.data.Dataset | None:
        """Held-out test batches (no augmentation), or `None` without `test_dir`."""
        return self._evaluation_dataset("test", self.test_files)


ImageFolder.__doc__ = document(ImageFolder.__doc__, (DataConfig, DATA_OPTIONS))


def folder_dataset(directory, class_names, image_size, batch_size, skip_bad=False):
    """A held-out folder as (images, labels) batches plus its scan, in `class_names` order."""
    report = scan_folder(directory, class_names=tuple(class_names))
    _refuse_bad_files(report, skip_bad)
    if not report.files:
        raise KerasFTError(f"Directory '{directory}' holds no usable images.")
    return evaluation_batches(decoded_dataset(list(report.files), image_size), batch_size), report
