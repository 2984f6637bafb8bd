"""The examples: each answers --help, and each download-and-unpack path runs offline.

Every test builds a tiny archive with the real one's layout and passes it by
a file:// URL, so `keras.utils.get_file` and the examples' own extraction and
splitting code run exactly as they would on the real download.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_folder
from PIL import Image

import keras_ft
from keras_ft.utils.errors import KerasFTError

EXAMPLES = ROOT / "examples"
NAMES = ("digits", "flowers", "cats_vs_dogs", "cifar10", "pets")


def load_example(name: str, monkeypatch):
    """Import `examples/<name>.py` (its `import _common` needs examples/ on the path)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jpeg(color, seed: int = 0, size: int = 40) -> bytes:
    """A small JPEG of one colour with some noise (a different image per seed)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.uniform(-30, 30, (size, size, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_tgz(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path.as_uri()


def counts(folder: Path) -> dict[str, int]:
    return {d.name: len(list(d.iterdir())) for d in sorted(folder.iterdir()) if d.is_dir()}


def no_leftovers(data_dir: Path) -> None:
    """Only the finished folder remains: no raw archive contents, no staging sibling."""
    assert not (data_dir / "raw").exists()
    assert not [p for p in data_dir.parent.iterdir() if p.name.startswith(f".{data_dir.name}")]


def test_every_example_answers_help():
    processes = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py"), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in NAMES
    }
    for name, process in processes.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, f"{name}: {err}"
        assert "--data-dir" in out and "--output" in out and "<class>/<image>" in out, name
        if name in ("flowers", "cats_vs_dogs", "pets"):
            assert "--url" in out, name


def test_flowers_download_unpack_and_seeded_holdout(tmp_path, monkeypatch):
    flowers = load_example("flowers", monkeypatch)
    members = {"flower_photos/LICENSE.txt": b"credits\n"}
    for c, name in enumerate(flowers.CLASSES):
        for i in range(5):
            members[f"flower_photos/{name}/{i}_photo.jpg"] = jpeg((40 * c, 200 - 30 * c, 90), i)
    url = write_tgz(tmp_path / "flower_photos.tgz", members)

    data_dir = flowers.prepare(tmp_path / "flowers", url, cache_dir=tmp_path / "cache")

    assert (tmp_path / "cache" / "datasets" / "flower_photos.tgz").is_file()  # via get_file
    assert counts(data_dir / "train") == dict.fromkeys(flowers.CLASSES, 4)
    assert counts(data_dir / "test") == dict.fromkeys(flowers.CLASSES, 1)
    assert (data_dir / "LICENSE.txt").read_text() == "credits\n"
    assert "seed 42" in (data_dir / "SOURCE.txt").read_text()
    no_leftovers(data_dir)
    # The split is a function of the seed: the same archive gives the same test files.
    again = flowers.prepare(tmp_path / "again", url, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in (again / "test").rglob("*.jpg")) == sorted(
        p.name for p in (data_dir / "test").rglob("*.jpg")
    )
    # A prepared folder is used as it is: no download (this URL does not exist).
    assert flowers.prepare(data_dir, (tmp_path / "missing.tgz").as_uri()) == data_dir


def test_cats_vs_dogs_keeps_broken_files_for_the_scan_to_report(tmp_path, monkeypatch):
    example = load_example("cats_vs_dogs", monkeypatch)
    archive = tmp_path / "kagglecatsanddogs_5340.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("readme[1].txt", "readme")
        for folder, color in (("Cat", (220, 60, 40)), ("Dog", (40, 60, 220))):
            for i in range(6):
                bundle.writestr(f"PetImages/{folder}/{i}.jpg", jpeg(color, i))
            bundle.writestr(f"PetImages/{folder}/Thumbs.db", b"\x00" * 64)
        bundle.writestr("PetImages/Cat/666.jpg", b"")  # empty, as in the real archive
        bundle.writestr("PetImages/Dog/11702.jpg", jpeg((40, 60, 220))[:300])  # truncated

    data_dir = example.prepare(
        tmp_path / "cats_vs_dogs", archive.as_uri(), cache_dir=tmp_path / "cache"
    )

    assert counts(data_dir / "train") == {"cat": 6, "dog": 6}
    assert counts(data_dir / "test") == {"cat": 1, "dog": 1}
    no_leftovers(data_dir)
    options = dict(test_dir=data_dir / "test", image_size=32, batch_size=2, quiet=True)
    with pytest.raises(KerasFTError, match="skip_bad=True"):
        keras_ft.ImageFolder(data_dir / "train", **options)
    data = keras_ft.ImageFolder(data_dir / "train", skip_bad=True, **options)
    skipped = sorted(Path(p["path"]).name for p in data.skipped)
    assert skipped == ["11702.jpg", "666.jpg"]
    assert len(data.train_files) + len(data.validation_files) + len(data.test_files) == 12


def test_cifar10_is_written_once_as_an_image_folder(tmp_path, monkeypatch):
    import keras

    example = load_example("cifar10", monkeypatch)
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    y_train = (np.arange(20) % 10).reshape(-1, 1)
    x_test = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    y_test = np.arange(10).reshape(-1, 1)
    calls = []

    def load_data():
        calls.append(1)
        return (x_train, y_train), (x_test, y_test)

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", load_data)

    data_dir = example.prepare(tmp_path / "cifar10")
    assert counts(data_dir / "train") == dict.fromkeys(example.CLASSES, 2)
    assert counts(data_dir / "test") == dict.fromkeys(example.CLASSES, 1)
    with Image.open(data_dir / "train" / "bird" / "00002.png") as image:  # index 2: class 2
        np.testing.assert_array_equal(np.asarray(image), x_train[2])
    no_leftovers(data_dir)
    example.prepare(tmp_path / "cifar10")
    assert len(calls) == 1  # written once


def test_pets_uses_the_official_split(tmp_path, monkeypatch):
    example = load_example("pets", monkeypatch)
    images = {f"images/Abyssinian_{i}.jpg": jpeg((200, 150, 90), i) for i in range(1, 5)}
    images.update(
        {f"images/american_pit_bull_terrier_{i}.jpg": jpeg((60, 60, 60), i) for i in (1, 2)}
    )
    images["images/Abyssinian_100.mat"] = b"not an image"
    listing = (
        "Abyssinian_1 1 1 1\nAbyssinian_2 1 1 1\namerican_pit_bull_terrier_1 3 2 2\n"
        "Abyssinian_9 1 1 1\n"  # listed but not in the images archive
    )
    annotations = {
        "annotations/trainval.txt": listing.encode(),
        "annotations/test.txt": b"Abyssinian_3 1 1 1\namerican_pit_bull_terrier_2 3 2 2\n",
        "annotations/list.txt": b"#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\n",
    }
    data_dir = example.prepare(
        tmp_path / "pets",
        write_tgz(tmp_path / "images.tar.gz", images),
        write_tgz(tmp_path / "annotations.tar.gz", annotations),
        cache_dir=tmp_path / "cache",
    )

    assert counts(data_dir / "train") == {"Abyssinian": 2, "american_pit_bull_terrier": 1}
    assert counts(data_dir / "test") == {"Abyssinian": 1, "american_pit_bull_terrier": 1}
    assert "missing from the archive: 1" in (data_dir / "SOURCE.txt").read_text()
    no_leftovers(data_dir)
    assert example.breed("american_pit_bull_terrier_12") == "american_pit_bull_terrier"


def test_unpack_refuses_members_outside_the_folder(tmp_path, monkeypatch):
    common = load_example("_common", monkeypatch)
    write_tgz(tmp_path / "evil.tgz", {"../evil.txt": b"x"})
    with pytest.raises(Exception, match="evil"):
        common.unpack(tmp_path / "evil.tgz", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError), common.staged(failed) as staging:
        (staging / "train").mkdir()
        raise RuntimeError("interrupted")
    assert not failed.exists() and not common.is_prepared(failed)
    no_leftovers(failed)


def test_flowers_example_end_to_end(tmp_path, monkeypatch, capsys):
    """One tiny run of a whole example: download, split, train, save with its report."""
    flowers = load_example("flowers", monkeypatch)
    # The SavedModel export (most of a tiny run's time) is tested in test_artifacts.
    monkeypatch.setattr("keras_ft.runs.artifacts.export_saved_model", lambda model, path: None)
    members = {}
    for c, name in enumerate(flowers.CLASSES):
        for i in range(8):
            members[f"flower_photos/{name}/{i}.jpg"] = jpeg((50 * c, 250 - 50 * c, 120), i)
    url = write_tgz(tmp_path / "flower_photos.tgz", members)
    output = tmp_path / "run"
    flowers.main(
        [
            *("--url", url, "--cache-dir", str(tmp_path / "cache")),
            *("--data-dir", str(tmp_path / "flowers"), "--output", str(output)),
            *("--backbone", "mobilenetv3small", "--weights", "none", "--image-size", "32"),
            *("--head-epochs", "1", "--finetune-epochs", "0", "--batch-size", "8", "--quiet"),
        ]
    )
    printed = capsys.readouterr().out
    assert "test accuracy: " in printed and "tensorboard --logdir" in printed
    assert (output / "report" / "report.html").is_file()
    assert keras_ft.load(output).class_names == flowers.CLASSES


# Every URL fetch fails at once, as without network: urllib sends it to a closed local port.
OFFLINE = {
    **dict.fromkeys(
        ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"), "http://127.0.0.1:9"
    ),
    **dict.fromkeys(("no_proxy", "NO_PROXY"), ""),
}
NEEDS = {  # what each example names when it cannot download
    "flowers": "flower_photos.tgz",
    "cats_vs_dogs": "kagglecatsanddogs_5340.zip",
    "cifar10": "CIFAR-10",
    "pets": "images.tar.gz",
}


def offline(url, *args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_offline_every_example_says_in_one_line_what_it_needs_and_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # a user's
    env.update(OFFLINE, KERAS_HOME=str(tmp_path / "keras_home"))
    processes = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py"), "--output", str(tmp_path / "run")]
            + ["--data-dir", str(tmp_path / name)]
            + (["--cache-dir", str(tmp_path / "cache")] if name != "cifar10" else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in NEEDS
    }
    # digits ships its data: only ImageNet weights, asked for, need the network.
    processes["digits"] = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "digits.py"), "--weights", "imagenet"]
        + ["--output", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for name, process in processes.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 2, f"{name}: {err}"
        line = err.strip()
        assert len(line.splitlines()) == 1, f"{name}: {err}"
        assert line.startswith("error: ") and "Connection refused" in line, name
        assert "--weights PATH" in line and "--weights none" in line, name
        if name in NEEDS:
            assert NEEDS[name] in line and "ImageNet weights for" in line, name
            assert "--data-dir DIR" in line and "<class>/<image>" in line, name
    assert not [name for name in [*NEEDS, "run"] if (tmp_path / name).exists()]


@pytest.mark.filterwarnings("ignore:Fine-tuning reached")  # untrained: below the probe
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_every_example_trains_on_a_local_class_folder(name, tmp_path, monkeypatch, capsys):
    """`--data-dir` holding `<class>/<image>` folders: no download, no test split."""
    example = load_example(name, monkeypatch)
    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    monkeypatch.setattr("keras_ft.runs.artifacts.export_saved_model", lambda model, path: None)
    local = write_folder(tmp_path / "photos", ("tabby", "tulip"), per_class=8, size=32)
    output = tmp_path / "run"
    example.main(
        [
            *("--data-dir", str(local), "--output", str(output), "--weights", "none"),
            *("--backbone", "testnet", "--image-size", "32", "--batch-size", "8"),
            *("--head-epochs", "1", "--finetune-epochs", "0", "--quiet"),
        ]
    )
    printed = capsys.readouterr().out
    assert "run directory: " in printed and "test accuracy" not in printed
    assert keras_ft.load(output).class_names == ("tabby", "tulip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "run"]


def test_offline_with_local_data_the_imagenet_weights_are_refused_before_the_scan(
    tmp_path, monkeypatch, capsys
):
    flowers = load_example("flowers", monkeypatch)
    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    scanned = []
    monkeypatch.setattr(keras_ft, "ImageFolder", lambda *a, **k: scanned.append(a))
    local = write_folder(tmp_path / "photos", ("tabby", "tulip"), per_class=2, size=32)
    with pytest.raises(SystemExit) as exited:
        flowers.main(
            [
                *("--data-dir", str(local), "--output", str(tmp_path / "run")),
                *("--backbone", "mobilenetv3small", "--image-size", "32"),
            ]
        )
    assert exited.value.code == 2 and not scanned
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "Cannot download the ImageNet weights" in line and "--weights none" in line
