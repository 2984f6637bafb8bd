"""scan_folder: class order, which files count, every problem, leakage, the cache, the CLI."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import bomb_png, write_folder
from PIL import Image

from keras_ft.cli.main import main
from keras_ft.data import decode as decode_module
from keras_ft.data import scan_cache as scan_cache_module
from keras_ft.data.folder import ImageFolder
from keras_ft.data.pipeline import read_images
from keras_ft.data.scan import Problem, natural_key, scan_folder
from keras_ft.utils.errors import KerasFTError


def solid(
    path: Path, colour=None, mode: str = "RGB", size: int = 32, fmt: str | None = None
) -> Path:
    """Write a solid-colour image; `fmt` overrides the format the extension implies.

    Without `colour`, the colour follows from the path, so that two files never
    hold the same image (the same image in two classes is a label conflict).
    """
    if colour is None:
        digest = hashlib.sha256(path.as_posix().encode()).digest()
        colour = tuple(digest[:3])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).convert(mode).save(path, format=fmt)
    return path


def names(report) -> list[str]:
    return [f.relpath for f in report.files]


def test_natural_class_order_puts_2_before_10(tmp_path):
    for name in ("10", "2", "1", "class10", "class2", "Class3"):
        solid(tmp_path / name / "a.png")
    report = scan_folder(tmp_path)
    assert report.class_names == ("1", "2", "10", "class2", "Class3", "class10")
    labels = {f.relpath: f.label for f in report.files}
    assert labels["2/a.png"] == 1
    assert labels["10/a.png"] == 2
    assert labels["class10/a.png"] == 5


def test_natural_key_orders_numbers_by_value():
    assert sorted(["img10", "img9", "img100", "img1"], key=natural_key) == [
        "img1",
        "img9",
        "img10",
        "img100",
    ]


def test_natural_key_takes_unicode_digits_as_letters():
    """'²' and '٣' pass str.isdigit() but are no ASCII number: sorted as text, no crash."""
    assert sorted(["²", "10", "٣", "2"], key=natural_key) == ["2", "10", "²", "٣"]


def test_files_are_ordered_by_class_then_path(tmp_path):
    for name in ("b", "a"):
        for stem in ("z", "m", "c"):
            solid(tmp_path / name / f"{stem}.png")
    report = scan_folder(tmp_path)
    assert names(report) == ["a/c.png", "a/m.png", "a/z.png", "b/c.png", "b/m.png", "b/z.png"]
    assert [f.label for f in report.files] == [0, 0, 0, 1, 1, 1]
    assert report.counts() == {"a": 3, "b": 3}


def test_extensions_in_any_letter_case_are_found(tmp_path):
    solid(tmp_path / "cat" / "one.JPG")
    solid(tmp_path / "cat" / "two.Png")
    solid(tmp_path / "cat" / "three.JpEg", fmt="JPEG")
    solid(tmp_path / "dog" / "four.PNG")
    solid(tmp_path / "dog" / "five.bmp")
    solid(tmp_path / "dog" / "six.GIF")
    report = scan_folder(tmp_path)
    assert sorted(names(report)) == sorted(
        [
            "cat/one.JPG",
            "cat/two.Png",
            "cat/three.JpEg",
            "dog/four.PNG",
            "dog/five.bmp",
            "dog/six.GIF",
        ]
    )
    assert report.problems == ()


def test_files_in_nested_folders_belong_to_their_class(tmp_path):
    solid(tmp_path / "cat" / "2024" / "a.png")
    solid(tmp_path / "dog" / "b.png")
    report = scan_folder(tmp_path)
    assert {f.relpath: f.label for f in report.files} == {"cat/2024/a.png": 0, "dog/b.png": 1}


def test_hidden_and_system_files_are_ignored_silently(tmp_path):
    solid(tmp_path / "cat" / "good.png")
    solid(tmp_path / "dog" / "good.png")
    solid(tmp_path / "cat" / ".hidden.png")
    solid(tmp_path / "cat" / ".hidden_dir" / "x.png")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1 not an image")
    (tmp_path / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 junk")
    (tmp_path / "dog" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (tmp_path / ".git").mkdir()
    solid(tmp_path / ".git" / "x.png")
    report = scan_folder(tmp_path)
    assert report.class_names == ("cat", "dog")
    assert names(report) == ["cat/good.png", "dog/good.png"]
    assert report.problems == () and report.not_images == ()
    assert "problem" not in report.summary() and "not an image" not in report.summary()


def test_every_format_pillow_decodes_is_read_including_webp_and_16_bit_tiff(tmp_path):
    grey = np.full((32, 32), 100, np.uint8)
    (tmp_path / "cat").mkdir()
    Image.fromarray(grey).save(tmp_path / "cat" / "a.webp", lossless=True)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "cat" / "deep16.tif")
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "cat" / "rgb.TIFF")
    solid(tmp_path / "dog" / "b.ppm", colour=(200, 10, 10))
    solid(tmp_path / "dog" / "c.png", colour=(200, 10, 20))
    report = scan_folder(tmp_path, cache=False)
    assert report.problems == () and report.not_images == ()
    assert len(report.files) == 5
    data = ImageFolder(tmp_path, image_size=16, batch_size=5, validation_split=0.0, augment=False)
    images = np.concatenate([x.numpy() for x, _ in data.unaugmented_train()])
    pixels = dict(zip((Path(f.path).name for f in data.train_files), images, strict=True))
    assert np.all(pixels["a.webp"] == 100) and np.all(pixels["deep16.tif"] == 100)
    assert np.all(pixels["rgb.TIFF"] == [10, 200, 30]) and np.all(pixels["b.ppm"] == [200, 10, 10])


def test_files_that_are_not_images_are_counted_and_named_in_the_summary(tmp_path):
    solid(tmp_path / "cat" / "a.png")
    solid(tmp_path / "dog" / "b.png")
    for name in ("notes.txt", "labels.csv", "model.h5", "x.pdf", "readme", "y.json", "z.zip"):
        (tmp_path / "dog" / name).write_text("not an image\n")
    (tmp_path / "cat" / ".hidden.txt").write_text("hidden files stay silent\n")
    report = scan_folder(tmp_path, cache=False)
    assert names(report) == ["cat/a.png", "dog/b.png"] and report.problems == ()
    assert report.not_images == tuple(
        f"dog/{n}"
        for n in ("labels.csv", "model.h5", "notes.txt", "readme", "x.pdf", "y.json", "z.zip")
    )
    assert (
        "7 file(s) not an image, skipped: dog/labels.csv, dog/model.h5, dog/notes.txt, "
        "dog/readme, dog/x.pdf, ..." in report.summary().splitlines()
    )


def write_run_marker(folder: Path, marker: str) -> Path:
    """Make `folder` look like a keras_ft output: `marker` at its top, report PNGs inside."""
    (folder / marker).parent.mkdir(parents=True, exist_ok=True)
    (folder / marker).write_text("{}")
    solid(folder / "report" / "confusion_matrix.png", size=40)
    solid(folder / "report" / "curves.png", size=40)
    return folder


def test_a_decompression_bomb_is_a_problem_and_the_cli_scan_exits_2(tmp_path, capsys):
    solid(tmp_path / "cat" / "a.png")
    solid(tmp_path / "dog" / "b.png")
    bomb = bomb_png(tmp_path / "dog" / "bomb.png")
    (problem,) = scan_folder(tmp_path, cache=False).bad_files
    assert (problem.path, problem.kind) == (str(bomb), "too_large")
    assert "too large to decode safely" in problem.reason and "400000000 pixels" in problem.reason
    result = run_here(capsys, "scan", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"problem: {bomb}: too large to decode safely" in result.stdout


def test_keras_ft_run_directories_in_the_data_folder_are_skipped_and_said(tmp_path, capsys):
    root = write_folder(tmp_path / "data", per_class=4, size=16)
    runs = [
        write_run_marker(root / "run", "run.json"),  # would become a class
        write_run_marker(root / "cat" / "interrupted", "checkpoints/state.json"),
        write_run_marker(root / "dog" / "nested" / "search", "search.json"),
        write_run_marker(root / "tuned", "trials.json"),
    ]
    report = scan_folder(root, cache=False)
    assert report.class_names == ("cat", "dog")
    assert all(Path(f.relpath).parent.name in ("cat", "dog") for f in report.files)
    assert report.counts() == {"cat": 4, "dog": 4} and report.bad_files == ()
    notes = {p.path: p for p in report.problems}
    assert sorted(notes) == sorted(str(run) for run in runs)
    for note in notes.values():
        assert note.kind == "run_directory" and note.level == "note"
        assert "a keras_ft run directory" in note.reason and "not scanned" in note.reason
    result = run_here(capsys, "scan", root, "--no-cache")
    assert result.returncode == 0 and result.stdout.rstrip().endswith("status: ok")
    assert f"note: {root / 'run'}: a keras_ft run directory (holds run.json)" in result.stdout
    with pytest.warns(UserWarning, match=r"keras_ft run directory.*not used as training data"):
        data = ImageFolder(root, image_size=16, batch_size=2, validation_split=0.0)
    assert data.class_names == ("cat", "dog") and len(data.train_files) == 8


def test_a_test_folder_holding_a_run_directory_keeps_the_training_classes(tmp_path):
    train = write_folder(tmp_path / "train", per_class=2, size=16)
    test = write_folder(tmp_path / "test", per_class=2, size=16, seed=1)
    write_run_marker(test / "run", "run.json")
    report = scan_folder(test, training=scan_folder(train, cache=False), cache=False)
    assert report.class_names == ("cat", "dog") and report.bad_files == ()


def test_scan_output_and_warnings_escape_control_characters_in_names(tmp_path, capsys):
    root = tmp_path / "d\x1bta"
    for i in range(4):
        solid(root / "\x1b[2Jcat" / f"a\r{i}.png")
    solid(root / "dog" / "b.png")
    (root / "dog" / "bad\x07.png").write_bytes(b"")
    summary = scan_folder(root, cache=False).summary()
    assert not any(c in summary for c in "\x1b\r\x07")
    assert "  \\x1b[2Jcat: 4" in summary
    assert f"problem: {tmp_path}/d\\x1bta/dog/bad\\x07.png: empty file" in summary
    result = run_here(capsys, "scan", root, "--no-cache")
    assert result.returncode == 2 and "status: training would refuse" in result.stdout
    assert not any(c in result.stdout + result.stderr for c in "\x1b\r\x07")
    (root / "dog" / "bad\x07.png").unlink()
    with pytest.warns(UserWarning, match="Imbalanced classes") as caught:
        ImageFolder(root, image_size=16, batch_size=1, validation_split=0.0)
    assert "'\\x1b[2Jcat' has 4 images" in str(caught[0].message)


@pytest.fixture
def bad_folder(tmp_path) -> Path:
    root = tmp_path / "data"
    solid(root / "cat" / "good.png")
    solid(root / "dog" / "good.png")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    png = solid(tmp_path / "whole.png", size=40).read_bytes()
    (root / "dog" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "dog" / "page.jpg").write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    return root


def test_bad_files_are_reported_with_path_and_reason(bad_folder):
    report = scan_folder(bad_folder)
    assert names(report) == ["cat/good.png", "dog/good.png"]
    reasons = {Path(p.path).relative_to(bad_folder).as_posix(): p.reason for p in report.bad_files}
    assert set(reasons) == {"cat/empty.jpg", "dog/truncated.png", "dog/page.jpg"}
    assert "empty" in reasons["cat/empty.jpg"] and "0 bytes" in reasons["cat/empty.jpg"]
    assert "truncated" in reasons["dog/truncated.png"]
    assert "not an image" in reasons["dog/page.jpg"]
    assert all(p.fatal for p in report.bad_files)
    summary = report.summary()
    for problem in report.bad_files:
        assert f"problem: {problem.path}: {problem.reason}" in summary


def test_bad_file_paths_are_real_paths(bad_folder):
    for problem in scan_folder(bad_folder).bad_files:
        assert Path(problem.path).is_file()


def test_png_named_jpg_is_usable_with_a_note(tmp_path):
    solid(tmp_path / "cat" / "photo.jpg", fmt="PNG")
    solid(tmp_path / "dog" / "b.png")
    report = scan_folder(tmp_path)
    assert names(report) == ["cat/photo.jpg", "dog/b.png"]
    assert report.bad_files == ()
    (note,) = report.problems
    assert not note.fatal
    assert note.path == str(tmp_path / "cat" / "photo.jpg")
    assert "PNG" in note.reason and "JPEG" in note.reason
    assert f"note: {note.path}" in report.summary()


def test_training_reads_the_pixels_the_scan_checked_and_predict_reads(tmp_path):
    # One decoder: TensorFlow's JPEG decoder rounds differently from Pillow's (up to 5
    # levels on most pixels of a photo), so training and prediction saw different images.
    solid(tmp_path / "cat" / "cmyk.jpg", mode="CMYK")
    path16 = tmp_path / "cat" / "deep.png"
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(path16)
    noise(tmp_path / "cat" / "photo.jpg", seed=3)
    solid(tmp_path / "dog" / "rgb.png")
    solid(tmp_path / "dog" / "rgb.jpg")
    solid(tmp_path / "dog" / "gray.png", mode="L")
    noise(tmp_path / "dog" / "photo.jpg", seed=4)
    data = ImageFolder(tmp_path, image_size=40, batch_size=7, validation_split=0.0, augment=False)
    assert data.report.bad_files == () and len(data.train_files) == 7
    images = np.concatenate([x.numpy() for x, _ in data.unaugmented_train()])
    read = read_images([f.path for f in data.train_files], (40, 40))
    np.testing.assert_array_equal(images, read.astype(np.float32))


def test_class_with_no_usable_image_is_a_problem(tmp_path):
    solid(tmp_path / "cat" / "a.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("empty")
    report = scan_folder(tmp_path)
    (problem,) = report.bad_files
    assert problem.path == str(tmp_path / "dog")
    assert "no usable images" in problem.reason
    assert report.counts() == {"cat": 1, "dog": 0}


def test_missing_directory_is_an_error_naming_the_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(KerasFTError) as error:
        scan_folder(missing)
    assert str(missing) in str(error.value)
    assert "does not exist" in str(error.value)


def test_a_file_instead_of_a_directory_is_an_error(tmp_path):
    path = solid(tmp_path / "a.png")
    with pytest.raises(KerasFTError, match="not a directory"):
        scan_folder(path)


def test_directory_without_class_folders_is_an_error_naming_the_path(tmp_path):
    solid(tmp_path / "flat" / "a.png")
    solid(tmp_path / "flat" / "b.png")
    (tmp_path / "flat" / ".cache").mkdir()
    with pytest.raises(KerasFTError) as error:
        scan_folder(tmp_path / "flat")
    message = str(error.value)
    assert str(tmp_path / "flat") in message
    assert "no class sub-folders" in message


def test_test_folder_with_different_classes_names_unknown_and_missing(tmp_path):
    for name in ("cat", "dog", "fox"):
        solid(tmp_path / "test" / name / "a.png")
    with pytest.raises(KerasFTError) as error:
        scan_folder(tmp_path / "test", class_names=("cat", "dog", "owl", "emu"))
    message = str(error.value)
    assert str(tmp_path / "test") in message
    assert "classes not in training: ['fox']" in message
    assert "training classes missing here: ['emu', 'owl']" in message


def test_test_folder_uses_the_given_class_order(tmp_path):
    for name in ("a", "b", "c"):
        solid(tmp_path / name / "x.png")
    report = scan_folder(tmp_path, class_names=("c", "a", "b"))
    assert report.class_names == ("c", "a", "b")
    assert {f.relpath: f.label for f in report.files} == {"c/x.png": 0, "a/x.png": 1, "b/x.png": 2}


# ------------------------------------------------ a real-world messy folder
#
# One folder with every kind of broken or odd file that turns up in practice.
# Classes "1", "2", "10" hold images, "20" holds only notes.txt (an empty class).


def chmod_000_still_reads() -> bool:
    """True as root (os.geteuid() == 0) unless its CAP_DAC_OVERRIDE was dropped."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.read_bytes()
            return True
        except PermissionError:
            return False


def animated_gif(path: Path, first, second) -> None:
    frames = [Image.new("RGB", (40, 40), colour) for colour in (first, second)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def without_zlib_checksum(colour):
    """A PNG whose image data lacks its zlib checksum: Pillow decodes it, libpng does not."""

    def write(path: Path) -> None:
        Image.new("RGB", (40, 40), colour).save(path)
        data = path.read_bytes()
        at = data.index(b"IDAT")
        length = int.from_bytes(data[at - 4 : at], "big")
        body = data[at + 4 : at + length]  # the chunk's data without its last 4 bytes
        crc = zlib.crc32(b"IDAT" + body).to_bytes(4, "big")
        chunk = len(body).to_bytes(4, "big") + b"IDAT" + body + crc
        path.write_bytes(data[: at - 4] + chunk + data[at + length + 8 :])

    return write


def with_bad_idat_crc(path: Path) -> None:
    data = path.read_bytes()
    at = data.index(b"IDAT")
    crc = at + 4 + int.from_bytes(data[at - 4 : at], "big")
    path.write_bytes(data[:crc] + bytes(b ^ 0xFF for b in data[crc : crc + 4]) + data[crc + 4 :])


def palette(colour, fmt: str):
    def write(path: Path) -> None:
        Image.new("RGB", (40, 40), colour).convert("P", palette=Image.Palette.ADAPTIVE).save(
            path, format=fmt
        )

    return write


# name in class "1": (the RGB the pipeline must read, writer)
ODD_VALID = {
    "cmyk.jpg": (
        (200, 30, 90),
        lambda p: Image.new("RGB", (40, 40), (200, 30, 90)).convert("CMYK").save(p, quality=95),
    ),
    "deep16.png": (
        (128, 128, 128),
        lambda p: Image.fromarray(np.full((40, 40), 32896, "<u2")).save(p),
    ),
    "gray.png": ((90, 90, 90), lambda p: Image.new("L", (40, 40), 90).save(p)),
    "rgba.png": ((10, 200, 30), lambda p: Image.new("RGBA", (40, 40), (10, 200, 30, 60)).save(p)),
    "palette.png": ((200, 40, 90), palette((200, 40, 90), "PNG")),
    "anim.gif": ((255, 0, 0), lambda p: animated_gif(p, (255, 0, 0), (0, 0, 255))),
    "image.bmp": ((30, 140, 220), lambda p: Image.new("RGB", (40, 40), (30, 140, 220)).save(p)),
    "palette.bmp": ((60, 180, 75), palette((60, 180, 75), "BMP")),
    "png_named.jpg": (
        (20, 60, 220),
        lambda p: Image.new("RGB", (40, 40), (20, 60, 220)).save(p, format="PNG"),
    ),
    "UPPER.JPG": (
        (90, 160, 40),
        lambda p: Image.new("RGB", (40, 40), (90, 160, 40)).save(p, format="JPEG", quality=95),
    ),
    "UPPER.PNG": ((240, 200, 10), lambda p: Image.new("RGB", (40, 40), (240, 200, 10)).save(p)),
    "čaj_ß.png": ((100, 50, 150), lambda p: Image.new("RGB", (40, 40), (100, 50, 150)).save(p)),
    "zlib_unchecked.png": ((70, 20, 180), without_zlib_checksum((70, 20, 180))),
}

# relative path: what its reason must say
BAD = {
    "2/empty.jpg": "empty file (0 bytes)",
    "2/cut.jpg": "truncated",
    "2/cut.png": "truncated",
    "2/short.jpg": "truncated",
    "2/short.png": "truncated",
    "2/bad_crc.png": "checksum",
    "2/page.jpg": "not an image: the content is a web page",
    "2/text.png": "not an image: the content is text",
    "2/tiny.png": "image is 2x2 px, smaller than min_size=8 px",
    "2/dangling.jpg": "broken symbolic link",
    "2/pipe.jpg": "not a regular file",
    "2/dup.png": "label conflict",
    "10/dup.png": "label conflict",
    "20": "class folder has no usable images",
}
NOTES = {
    "1/png_named.jpg": "content is PNG but the name says JPEG",
    "10/loop": "symbolic link loop",
    "everything": "symbolic link loop",
    "1/also_two": "points into another class folder",
}
IGNORED = ["1/.hidden.png", "1/.DS_Store", "2/Thumbs.db", "2/desktop.ini", "10/notes.txt"]


def noise(path: Path, seed: int, size: int = 40) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def messy_folder(root: Path, empty_class: bool = True) -> Path:
    """Write the messy folder described above under `root`."""
    for c, name in enumerate(("1", "2", "10")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            noise(root / name / f"n{i}.png", seed=100 * c + i)
    for name, (_, write) in ODD_VALID.items():
        write(root / "1" / name)
    (root / "2" / "empty.jpg").write_bytes(b"")
    for name, fmt in (("cut.jpg", "JPEG"), ("cut.png", "PNG")):
        noise(root / "2" / name, seed=7)
        Image.open(root / "2" / name).save(root / "2" / name, format=fmt)
        data = (root / "2" / name).read_bytes()
        (root / "2" / name).write_bytes(data[: len(data) // 2])
    for name, cut in (("short.jpg", 2), ("short.png", 12)):  # no end marker (EOI, IEND)
        noise(root / "2" / name, seed=8)
        (root / "2" / name).write_bytes((root / "2" / name).read_bytes()[:-cut])
    noise(root / "2" / "bad_crc.png", seed=9)
    with_bad_idat_crc(root / "2" / "bad_crc.png")
    (root / "2" / "page.jpg").write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    (root / "2" / "text.png").write_text("this is not a picture\n")
    Image.new("RGB", (2, 2), (1, 2, 3)).save(root / "2" / "tiny.png")
    (root / "2" / "dangling.jpg").symlink_to(root / "2" / "gone.jpg")
    os.mkfifo(root / "2" / "pipe.jpg")  # reading it would block forever
    noise(root / "2" / "dup.png", seed=99)
    (root / "10" / "dup.png").write_bytes((root / "2" / "dup.png").read_bytes())
    (root / "10" / "loop").symlink_to("..", target_is_directory=True)
    (root / "everything").symlink_to(".", target_is_directory=True)
    (root / "1" / "also_two").symlink_to("../2", target_is_directory=True)
    noise(root / "1" / ".hidden.png", seed=5)
    (root / "1" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "2" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnails")
    (root / "2" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "10" / "notes.txt").write_text("labels checked by hand\n")
    if empty_class:
        (root / "20").mkdir()
        (root / "20" / "notes.txt").write_text("to do\n")
    return root


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    """Keep the scan cache of these tests out of the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_FT_CACHE", str(tmp_path_factory.mktemp("scan-cache")))
        yield


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    return messy_folder(tmp_path_factory.mktemp("messy") / "data")


@pytest.fixture(scope="module")
def messy_report(messy):
    return scan_folder(messy, cache=False)


def by_relpath(report, root: Path) -> dict[str, Problem]:
    return {Path(p.path).relative_to(root).as_posix(): p for p in report.problems}


def test_messy_fixture_has_at_least_fifteen_kinds_of_odd_files():
    assert len(ODD_VALID) + len(BAD) + len(NOTES) + len(IGNORED) >= 15 + 10


@pytest.mark.parametrize("relpath", sorted(BAD))
def test_messy_scan_names_each_bad_file_with_its_reason(relpath, messy, messy_report):
    problems = by_relpath(messy_report, messy)
    assert relpath in problems
    problem = problems[relpath]
    assert problem.fatal and problem.level == "problem"
    assert BAD[relpath] in problem.reason
    assert f"  problem: {problem.path}: {problem.reason}" in messy_report.summary()
    assert relpath not in {f.relpath for f in messy_report.files}


def test_messy_label_conflict_names_the_other_copy_and_class(messy, messy_report):
    problems = by_relpath(messy_report, messy)
    assert f"{messy / '10' / 'dup.png'} (class '10')" in problems["2/dup.png"].reason
    assert f"{messy / '2' / 'dup.png'} (class '2')" in problems["10/dup.png"].reason


@pytest.mark.parametrize("relpath", sorted(NOTES))
def test_messy_scan_notes_odd_but_harmless_things(relpath, messy, messy_report):
    problem = by_relpath(messy_report, messy)[relpath]
    assert not problem.fatal and problem.level == "note"
    assert NOTES[relpath] in problem.reason


def test_messy_scan_has_no_other_problems(messy, messy_report):
    assert set(by_relpath(messy_report, messy)) == set(BAD) | set(NOTES)


def test_messy_odd_but_valid_files_are_used(messy_report):
    odd = {f.relpath for f in messy_report.files if not Path(f.relpath).name.startswith("n")}
    assert odd == {f"1/{name}" for name in ODD_VALID}
    assert all(len(f.sha256) == 64 for f in messy_report.files)


def test_messy_ignored_files_and_links_are_silent_and_nothing_is_counted_twice(messy, messy_report):
    assert messy_report.class_names == ("1", "2", "10", "20")  # natural order
    relpaths = [f.relpath for f in messy_report.files]
    assert len(relpaths) == len(set(relpaths)) == 19 + 6 + 6
    mentioned = relpaths + [p.path for p in messy_report.problems]
    for name in IGNORED:
        assert not any(Path(m).name == Path(name).name for m in mentioned), name
    assert not any("loop/" in r or "also_two/" in r or "everything" in r for r in relpaths)
    assert messy_report.counts() == {"1": 19, "2": 6, "10": 6, "20": 0}


def test_min_size_is_the_threshold_for_tiny_images(messy):
    report = scan_folder(messy, min_size=2, cache=False)
    assert "2/tiny.png" in {f.relpath for f in report.files}
    assert "2/tiny.png" not in by_relpath(report, messy)


@pytest.mark.skipif(chmod_000_still_reads(), reason="root reads files whatever their permissions")
def test_unreadable_file_is_a_problem(tmp_path, capsys):
    solid(tmp_path / "cat" / "a.png")
    locked = solid(tmp_path / "dog" / "locked.png")
    solid(tmp_path / "dog" / "b.png")
    locked.chmod(0)
    try:
        (problem,) = scan_folder(tmp_path).bad_files
        assert problem.path == str(locked) and "permission denied" in problem.reason
        result = run_here(capsys, "scan", tmp_path)
        assert result.returncode == 2 and f"{locked}: cannot be read" in result.stdout
    finally:
        locked.chmod(0o644)


def test_permission_denied_is_reported_and_never_cached(counted_decodes, monkeypatch, tmp_path):
    # Runs as root too: the read itself is made to fail, as chmod 000 does for other users.
    root = tmp_path / "data"
    solid(root / "cat" / "a.png")
    locked = solid(root / "dog" / "locked.png")
    solid(root / "dog" / "b.png")
    real_read = decode_module.read_regular_file

    def read(path):
        if path == str(locked):
            raise PermissionError(13, "Permission denied", path)
        return real_read(path)

    monkeypatch.setattr(decode_module, "read_regular_file", read)
    (problem,) = scan_folder(root).bad_files
    assert (problem.path, problem.kind) == (str(locked), "unreadable")
    assert "permission denied" in problem.reason
    monkeypatch.setattr(decode_module, "read_regular_file", real_read)  # permissions fixed
    report = scan_folder(root)
    assert report.bad_files == () and str(locked) in {f.path for f in report.files}
    assert len(counted_decodes) == 2 + 1 and report.from_cache == 2


def test_label_conflict_only_across_classes(tmp_path):
    a = solid(tmp_path / "cat" / "a.png", colour=(1, 2, 3))
    (tmp_path / "cat" / "a_copy.png").write_bytes(a.read_bytes())
    solid(tmp_path / "cat" / "c.png")
    solid(tmp_path / "dog" / "b.png")
    report = scan_folder(tmp_path, cache=False)
    assert report.problems == ()  # a copy inside one class is no conflict
    (tmp_path / "dog" / "a_again.png").write_bytes(a.read_bytes())
    report = scan_folder(tmp_path, cache=False)
    assert {Path(p.path).name for p in report.bad_files} == {"a.png", "a_copy.png", "a_again.png"}
    assert {p.kind for p in report.bad_files} == {"label_conflict"}
    assert names(report) == ["cat/c.png", "dog/b.png"]


def test_a_data_sets_root_of_split_folders_is_refused_naming_the_splits(tmp_path, capsys):
    root = tmp_path / "digits"
    for s, split in enumerate(("train", "test")):
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            noise(root / split / name / "0.png", seed=10 * s + c)
    with pytest.raises(KerasFTError) as caught:
        scan_folder(root)
    message = str(caught.value)
    assert f"'{root}' holds the split folder(s) ['test', 'train'] with sub-folders" in message
    assert "it would train a classifier of 'test' vs 'train'" in message
    assert f"the classes: '{root / 'train'}', and the held-out one as the test folder" in message
    assert f"(--test-dir, test_dir=): '{root / 'test'}'." in message
    result = run_here(capsys, "train", root, "--output", tmp_path / "run")
    assert result.returncode == 2 and "a data set's root, not a folder of classes" in result.stderr
    assert not (tmp_path / "run").exists()
    # Classes merely named like splits, their images right inside, are classes.
    named = tmp_path / "named"
    for c, name in enumerate(("train", "val")):
        (named / name).mkdir(parents=True)
        noise(named / name / "0.png", seed=c)
    assert scan_folder(named).class_names == ("train", "val")


# ------------------------------------------------------------------ leakage


@pytest.fixture
def leaky(tmp_path) -> tuple[Path, Path, Path]:
    """(train, test, the test file that is also in training)."""
    for s, split in enumerate(("train", "test")):
        for c, name in enumerate(("cat", "dog")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(4):
                noise(tmp_path / split / name / f"{i}.png", seed=100 * s + 10 * c + i)
    leaked = tmp_path / "test" / "dog" / "leaked.png"
    leaked.write_bytes((tmp_path / "train" / "cat" / "2.png").read_bytes())
    return tmp_path / "train", tmp_path / "test", leaked


def test_same_image_in_training_and_test_is_a_warning_not_fatal(leaky):
    train, test, leaked = leaky
    report = scan_folder(test, training=scan_folder(train))
    assert report.class_names == ("cat", "dog")
    assert report.bad_files == ()
    (warning,) = report.warnings
    assert warning.path == str(leaked) and warning.kind == "leakage"
    assert f"same image as training file {train / 'cat' / '2.png'}" in warning.reason
    assert "leakage" in warning.reason and "not fatal" in warning.reason
    summary = report.summary()
    assert f"  warning: {leaked}: " in summary
    assert "1 warning(s): reported, not fatal" in summary
    assert str(leaked) in {f.path for f in report.files}  # still used
    assert scan_folder(test).warnings == ()  # only against a training report


def test_cli_scan_with_test_dir_reports_leakage_and_exits_0(leaky, capsys):
    train, test, leaked = leaky
    result = run_here(capsys, "scan", train, "--test-dir", test)
    assert result.returncode == 0, result.stdout
    assert f"warning: {leaked}: same image as training file" in result.stdout
    assert "status: ok, with 1 warning(s) (not fatal)" in result.stdout


def test_image_folder_keeps_a_leaking_test_file_and_warns_about_it(leaky):
    train, test, leaked = leaky
    with pytest.warns(UserWarning, match="1 of the 9 images in the test folder") as caught:
        data = ImageFolder(train, test_dir=test, image_size=32, batch_size=2, validation_split=0.0)
    message = str(caught[0].message)
    assert f"are also in the training folder '{train}'" in message and str(leaked) in message
    assert "test accuracy will be optimistic" in message
    assert f"`keras-ft scan {train} --test-dir {test}` lists them all" in message
    assert [p.path for p in data.test_report.warnings] == [str(leaked)]
    assert str(leaked) in {f.path for f in data.test_files}
    assert data.skipped == []


# -------------------------------------------------------------------- cache


@pytest.fixture
def counted_decodes(monkeypatch, tmp_path):
    """A private cache folder and a list that grows by one per decoded file."""
    monkeypatch.setenv("KERAS_FT_CACHE", str(tmp_path / "cache"))
    calls = []
    real = decode_module._decode

    def counting(data):
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(decode_module, "_decode", counting)
    return calls


def listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_second_scan_of_an_unchanged_folder_decodes_nothing(counted_decodes, tmp_path):
    root = write_folder(tmp_path / "data", per_class=5)
    (root / "cat" / "cut.png").write_bytes((root / "cat" / "000.png").read_bytes()[:100])
    before = listing(root)
    first = scan_folder(root)
    assert len(counted_decodes) == 11 and first.from_cache == 0
    second = scan_folder(root)
    assert len(counted_decodes) == 11 and second.from_cache == 11
    assert second.files == first.files and second.problems == first.problems
    assert "truncated" in second.bad_files[0].reason
    assert listing(root) == before  # nothing written into the data folder
    (cache_file,) = (tmp_path / "cache").iterdir()
    assert cache_file.name.startswith("scan-") and cache_file.suffix == ".json"


def test_a_modified_file_is_checked_again(counted_decodes, tmp_path):
    root = write_folder(tmp_path / "data", per_class=3)
    scan_folder(root)
    target = root / "dog" / "001.png"
    target.write_bytes(target.read_bytes()[:80])
    report = scan_folder(root)
    assert len(counted_decodes) == 6 + 1
    (problem,) = report.bad_files
    assert problem.path == str(target) and "truncated" in problem.reason
    assert report.from_cache == 5


def rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """Write `data` (of the file's size) into `path` as `cp -p` does: same inode, same mtime."""
    before = path.stat()
    assert len(data) == before.st_size
    time.sleep(0.05)  # past a tick of the file system's clock, which stamps the change time
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )


def test_a_file_changed_with_its_size_and_mtime_kept_is_checked_again(counted_decodes, tmp_path):
    root = write_folder(tmp_path / "data", per_class=3)
    broken = root / "dog" / "001.png"
    changed = solid(root / "cat" / "photo.bmp", colour=(10, 20, 30))  # uncompressed: same size
    first = scan_folder(root)
    data = broken.read_bytes()
    rewrite_keeping_size_and_mtime(broken, data[:100] + bytes(len(data) - 100))
    pixels = bytearray(changed.read_bytes())
    pixels[-1] ^= 0xFF  # one pixel of another colour: still a good image, other content
    rewrite_keeping_size_and_mtime(changed, bytes(pixels))
    report = scan_folder(root)
    assert len(counted_decodes) == 7 + 2 and report.from_cache == 5
    (problem,) = report.bad_files
    assert problem.path == str(broken)
    sha256 = {f.relpath: f.sha256 for f in report.files}
    assert sha256["cat/photo.bmp"] == hashlib.sha256(pixels).hexdigest()
    assert sha256["cat/photo.bmp"] != {f.relpath: f.sha256 for f in first.files}["cat/photo.bmp"]


@pytest.mark.parametrize(
    "failure",
    [
        MemoryError(),
        OSError("decoder jpeg2k not available"),
        RuntimeError("a decoder bug"),
        Image.DecompressionBombError("Image size (400000000 pixels) exceeds limit"),
    ],
    ids=type,
)
def test_a_failure_that_is_not_a_property_of_the_bytes_is_never_cached(
    failure, counted_decodes, monkeypatch, tmp_path
):
    root = write_folder(tmp_path / "data", per_class=2, size=16)
    flaky = root / "dog" / "001.png"
    counting = decode_module._decode

    def decode(data):
        if data == flaky.read_bytes():
            raise failure
        return counting(data)

    monkeypatch.setattr(decode_module, "_decode", decode)
    (problem,) = scan_folder(root).bad_files
    assert problem.path == str(flaky)
    monkeypatch.setattr(decode_module, "_decode", counting)  # the same bytes, decoded this time
    report = scan_folder(root)
    assert report.bad_files == () and str(flaky) in {f.path for f in report.files}
    assert report.from_cache == 3 and len(counted_decodes) == 3 + 1


def test_a_cache_of_an_older_version_is_not_trusted(counted_decodes, tmp_path):
    # Version 1 cached every decoder failure, also those that pass without the file changing.
    root = write_folder(tmp_path / "data", per_class=2, size=16)
    scan_folder(root)
    (cache_file,) = (tmp_path / "cache").iterdir()
    payload = json.loads(cache_file.read_text())
    payload["version"] = 1
    for entry in payload["entries"].values():
        entry["record"] = {"error": "undecodable", "reason": "cannot be decoded (MemoryError)"}
    cache_file.write_text(json.dumps(payload))
    report = scan_folder(root)
    assert report.bad_files == () and report.from_cache == 0 and len(counted_decodes) == 8


def test_a_content_error_is_cached_until_the_file_changes(counted_decodes, monkeypatch, tmp_path):
    root = write_folder(tmp_path / "data", per_class=2, size=16)
    (root / "dog" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    first = scan_folder(root)
    assert [Path(p.path).name for p in first.bad_files] == ["bad.png"]
    second = scan_folder(root)
    assert second.problems == first.problems and second.from_cache == 5


def test_a_corrupt_cache_file_is_ignored(counted_decodes, tmp_path):
    root = write_folder(tmp_path / "data", per_class=3)
    first = scan_folder(root)
    (cache_file,) = (tmp_path / "cache").iterdir()
    for garbage in ('{"version": 1, "entries": [1, 2', '{"version": 1, "pillow": 0}', "[]"):
        cache_file.write_text(garbage)
        assert scan_folder(root).files == first.files
    assert len(counted_decodes) == 6 * 4
    cache_file.write_text(cache_file.read_text().replace('"sha256"', '"sha"'))
    assert scan_folder(root).files == first.files  # malformed entries are decoded again


def test_no_cache_neither_reads_nor_writes_it(counted_decodes, tmp_path):
    root = write_folder(tmp_path / "data", per_class=2)
    scan_folder(root, cache=False)
    scan_folder(root, cache=False)
    assert len(counted_decodes) == 8
    assert not (tmp_path / "cache").exists()


def test_cache_folder_inside_the_data_folder_is_never_written(monkeypatch, tmp_path):
    root = write_folder(tmp_path / "data", per_class=2)
    monkeypatch.setenv("KERAS_FT_CACHE", str(root / "cat" / "cache"))
    before = listing(root)
    scan_folder(root)
    assert listing(root) == before


# ----------------------------------------------------------------- progress


def test_progress_on_stderr_for_large_folders_and_silent_when_quiet(monkeypatch, tmp_path, capsys):
    root = write_folder(tmp_path / "data", per_class=3, size=16)
    monkeypatch.setattr(scan_cache_module, "PROGRESS_EVERY", 2)
    scan_folder(root, cache=False)
    assert capsys.readouterr().err == ""  # a small folder: no progress
    monkeypatch.setattr(scan_cache_module, "PROGRESS_MIN_FILES", 6)
    scan_folder(root, cache=False)
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == [f"scanning {root}: {n}/6 files" for n in (2, 4, 6)]
    assert err[3].startswith(f"scanned {root}: 6 files in ") and "(0 from the cache)" in err[3]
    scan_folder(root, cache=False, quiet=True)
    assert capsys.readouterr() == ("", "")


# -------------------------------------------------- the command line on it


def run_here(capsys, *args):
    """Run `keras-ft ARGS` in this process; (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def test_cli_scan_exits_2_and_prints_every_problem_with_its_path(messy, capsys):
    result = run_here(capsys, "scan", messy)
    assert result.returncode == 2
    for relpath, reason in BAD.items():
        line = next(x for x in result.stdout.splitlines() if f"problem: {messy / relpath}:" in x)
        assert reason in line
    for relpath in NOTES:
        assert f"note: {messy / relpath}: " in result.stdout
    assert "class order (label 0 first): ['1', '2', '10', '20']" in result.stdout
    assert "  1: 19\n  2: 6\n  10: 6\n  20: 0\n" in result.stdout
    status = f"status: training would refuse this data ({len(BAD)} problem(s) in {messy})"
    assert status in result.stdout


def test_cli_scan_of_a_clean_folder_exits_0(tmp_path, capsys):
    root = write_folder(tmp_path / "data", classes=("2", "10"), per_class=2)
    result = run_here(capsys, "scan", root, "--quiet")
    assert result.returncode == 0
    assert "class order (label 0 first): ['2', '10']" in result.stdout
    assert result.stdout.rstrip().endswith("status: ok")


TRAIN = (
    "--backbone testnet --weights none --image-size 32 --head-epochs 1 "
    "--finetune-epochs 0 --batch-size 4 --quiet"
).split()


def test_cli_train_refuses_the_messy_folder_listing_every_file_and_writes_nothing(
    messy, tmp_path, capsys
):
    before = listing(messy)
    output = tmp_path / "run"
    result = run_here(capsys, "train", messy, *TRAIN, "--output", output)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: {len(BAD)} file(s) in '{messy}' cannot be used" in result.stderr
    for relpath, reason in BAD.items():
        line = next(x for x in result.stderr.splitlines() if x.startswith(f"  {messy / relpath}:"))
        assert reason in line
    assert "--skip-bad" in result.stderr
    assert not output.exists()
    assert listing(messy) == before


def test_cli_train_skip_bad_still_refuses_an_empty_class(messy, tmp_path, capsys):
    result = run_here(capsys, "train", messy, *TRAIN, "--skip-bad", "--output", tmp_path / "r")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Class folder(s) ['20']" in result.stderr and "no usable images" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def trainable_messy(tmp_path_factory) -> Path:
    """The messy folder without its empty class: --skip-bad can train on it."""
    return messy_folder(tmp_path_factory.mktemp("messy_trainable") / "data", empty_class=False)


@contextlib.contextmanager
def unblocking(fifo: Path, after: float = 30.0):
    """Open the writing end of `fifo` now and then after `after` seconds, until the block
    ends: a reader stuck on it then reads an empty file instead of hanging the suite."""
    done = threading.Event()

    def watch():
        if not done.wait(after):
            while not done.wait(0.1):
                with contextlib.suppress(OSError):  # no reader yet
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    watchdog = threading.Thread(target=watch, daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        watchdog.join()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    data = write_folder(tmp_path_factory.mktemp("tiny") / "data", per_class=6, size=32)
    output = data.parent / "run"
    assert main(["train", str(data), *TRAIN, "--output", str(output)]) == 0
    return output


@pytest.mark.parametrize("kind", ["named pipe", "device"])  # a folder: its images (test_cli)
def test_cli_predict_refuses_what_is_not_a_regular_file_without_blocking(
    kind, tiny_run, tmp_path, capsys
):
    path = {"named pipe": tmp_path / "fifo.png", "device": Path(os.devnull)}[kind]
    if kind == "named pipe":
        os.mkfifo(path)  # opening it to read waits for a writer: forever
    started = time.monotonic()
    with unblocking(path) if kind == "named pipe" else contextlib.nullcontext():
        result = run_here(capsys, "predict", tiny_run, path)
    assert time.monotonic() - started < 30
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stdout.splitlines()
    answer = json.loads(line)
    assert answer["path"] == str(path) and f"'{path}'" in answer["error"]
    assert "not a regular file" in answer["error"] and kind in answer["error"]


def test_cli_predict_says_what_a_file_that_is_not_an_image_holds(tiny_run, tmp_path, capsys):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    result = run_here(capsys, "predict", tiny_run, path)
    assert result.returncode == 2
    error = f"Cannot read image '{path}': not an image: the content is text."
    assert json.loads(result.stdout) == {"path": str(path), "error": error}


def test_cli_train_skip_bad_trains_on_the_rest(trainable_messy, tmp_path, capsys):
    output = tmp_path / "run"
    result = run_here(capsys, "train", trainable_messy, *TRAIN, "--skip-bad", "--output", output)
    assert result.returncode == 0, result.stderr
    # Python warnings come as one line each, without the source line Python would show.
    warned = f"warning: Imbalanced classes in '{trainable_messy}': '1' has 19"
    assert any(line.startswith(warned) for line in result.stderr.splitlines()), result.stderr
    assert "UserWarning" not in result.stderr and "return ImageFolder(" not in result.stderr
    assert (output / "model.keras").is_file() and (output / "run.json").is_file()
    skipped = json.loads((output / "run.json").read_text())["skipped_files"]
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert len(skipped) >= 5 and all(s["reason"] for s in skipped)


def test_skip_bad_lists_skipped_files_with_reasons_and_reads_odd_files_as_rgb(trainable_messy):
    data = ImageFolder(
        trainable_messy,
        test_dir=trainable_messy,
        image_size=32,
        batch_size=4,
        validation_split=0.0,
        augment=False,
        skip_bad=True,
    )
    expected = [
        {"path": str(trainable_messy / relpath), "reason": reason}
        for relpath, reason in BAD.items()
        if relpath != "20"
    ]
    skipped = data.skipped
    assert len(skipped) == 2 * len(expected)  # the training folder's, then the test folder's
    for got in (skipped[: len(expected)], skipped[len(expected) :]):
        assert sorted(s["path"] for s in got) == sorted(e["path"] for e in expected)
        reasons = {s["path"]: s["reason"] for s in got}
        for e in expected:
            assert e["reason"] in reasons[e["path"]]
    images = np.concatenate([x.numpy() for x, _ in data.test])
    decoded = dict(zip((Path(f.path).name for f in data.test_files), images, strict=True))
    for name, (colour, _) in ODD_VALID.items():
        difference = np.abs(decoded[name] - np.array(colour, np.float32)).max()
        assert difference <= 2, (name, decoded[name][0, 0], colour)


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "a\u2028b"])
def test_a_class_name_with_a_line_break_is_refused(name, tmp_path, capsys):
    """labels.txt holds one class name a line: a name holding a break would shift the rest."""
    root = write_folder(tmp_path / "data", ("cat", name), per_class=2, size=16)
    with pytest.raises(KerasFTError, match="holds a line break") as caught:
        scan_folder(root, cache=False)
    assert "\n" not in str(caught.value) and "Rename the folder" in str(caught.value)
    result = run_here(capsys, "scan", root)
    assert result.returncode == 2 and "holds a line break" in result.stderr
