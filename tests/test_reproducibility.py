import json

import numpy as np
import pytest
from conftest import run_cli, tiny_backbone

from keras_ft.reproducibility import environment, file_hashes, fingerprint, weights_sha256
from keras_ft.scan import scan_folder


def train_in_fresh_process(data_dir, output, seed):
    result = run_cli(
        "train",
        data_dir / "train",
        "--backbone",
        "mobilenetv3small",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "32",
        "--head-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--seed",
        seed,
        "--quiet",
        "--output",
        output,
    )
    assert result.returncode == 0, result.stderr
    return json.loads((output / "run.json").read_text())["weights_sha256"]


@pytest.fixture(scope="module")
def hashes(tmp_path_factory):
    from conftest import DIGITS

    tmp = tmp_path_factory.mktemp("repro")
    return {
        name: train_in_fresh_process(DIGITS, tmp / name, seed)
        for name, seed in (("a", 7), ("b", 7), ("other", 8))
    }


def test_same_seed_gives_bitwise_identical_weights_in_two_processes(hashes):
    assert hashes["a"] == hashes["b"]


def test_another_seed_gives_other_weights(hashes):
    assert hashes["a"] != hashes["other"]


def test_weights_hash_sees_a_single_changed_value():
    model = tiny_backbone()
    before = weights_sha256(model)
    kernel = model.get_layer("conv_a").kernel
    value = np.asarray(kernel).copy()
    value.flat[0] = np.nextafter(value.flat[0], np.float32(1))
    kernel.assign(value)
    assert weights_sha256(model) != before


def test_fingerprint_follows_content_and_names(folder):
    first = fingerprint(file_hashes(scan_folder(folder).files))
    assert fingerprint(file_hashes(scan_folder(folder).files)) == first
    image = folder / "cat" / "000.png"
    image.write_bytes(image.read_bytes() + b"\0")
    assert fingerprint(file_hashes(scan_folder(folder).files)) != first


def test_environment_names_versions():
    env = environment()
    assert {"python", "tensorflow", "keras", "numpy", "devices"} <= set(env)
