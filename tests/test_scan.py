"""scan_folder: class order, which files count, the bad-file report, and class-set mismatches."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_ft.errors import KerasFTError
from keras_ft.scan import natural_key, scan_folder


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
    (tmp_path / "dog" / "notes.txt").write_text("labels checked by hand\n")
    (tmp_path / ".git").mkdir()
    solid(tmp_path / ".git" / "x.png")
    report = scan_folder(tmp_path)
    assert report.class_names == ("cat", "dog")
    assert names(report) == ["cat/good.png", "dog/good.png"]
    assert report.problems == ()
    assert "problem" not in report.summary()


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


def test_cmyk_jpeg_and_16_bit_png_need_pillow(tmp_path):
    solid(tmp_path / "cat" / "cmyk.jpg", mode="CMYK")
    path16 = tmp_path / "cat" / "deep.png"
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(path16)
    solid(tmp_path / "dog" / "rgb.png")
    solid(tmp_path / "dog" / "rgb.jpg")
    solid(tmp_path / "dog" / "gray.png", mode="L")
    report = scan_folder(tmp_path)
    assert report.bad_files == ()
    needs_pil = {f.relpath: f.needs_pil for f in report.files}
    assert needs_pil == {
        "cat/cmyk.jpg": True,
        "cat/deep.png": True,
        "dog/gray.png": False,
        "dog/rgb.jpg": False,
        "dog/rgb.png": False,
    }


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
