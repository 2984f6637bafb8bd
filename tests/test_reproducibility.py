import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN, copy_run, run_cli, tiny_backbone, write_folder

from keras_ft.cli.main import main
from keras_ft.data.scan import scan_folder
from keras_ft.runs.reproducibility import environment, file_hashes, fingerprint, weights_sha256


def train(data_dir, output, seed, fresh_process):
    """`keras-ft train` in a fresh process, or in this one (which has run other tests)."""
    args = [*TINY_TRAIN, "--batch-size", "8", "--head-epochs", "1", "--finetune-epochs", "1"]
    args = ["train", data_dir, *args, "--seed", seed, "--output", output]
    if fresh_process:
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
    else:
        assert main([str(a) for a in args]) == 0
    return json.loads((output / "run.json").read_text())["weights_sha256"]


@pytest.fixture(scope="module")
def hashes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repro")
    data = write_folder(tmp / "data", ("a", "b", "c"), per_class=16)
    hashes = {
        name: train(data, tmp / name, seed, fresh_process=name == "a")
        for name, seed in (("a", 7), ("b", 7), ("other", 8))
    }
    hashes["run_dir"] = tmp / "a"
    return hashes


def test_same_seed_gives_bitwise_identical_weights_in_two_processes(hashes):
    """A fresh process and this test process, with whatever earlier tests left in it."""
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


def test_reproduce_prints_match(hashes, capsys):
    code = main(["reproduce", str(hashes["run_dir"]), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[-1] == "MATCH"
    assert f"reproduced weights: {hashes['a']}" in out


def test_reproduce_reports_mismatch_with_exit_1(hashes, tmp_path, capsys):
    def edit(record):
        record["weights_sha256"] = "0" * 64
        record["environment"]["tensorflow"] = "0.0.1"

    copy = copy_run(hashes["run_dir"], tmp_path / "run", edit)
    assert main(["reproduce", str(copy), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "MISMATCH"
    assert "environment differs: tensorflow: 0.0.1 (run)" in out


def test_reproduce_stops_on_changed_data_and_lists_files(hashes, tmp_path, capsys):
    first, second = sorted(
        json.loads((hashes["run_dir"] / "run.json").read_text())["data_files"]["train"]
    )[:2]

    def edit(record):
        files = record["data_files"]["train"]
        del files[first]
        files[second] = "f" * 64
        files["3/gone.png"] = "e" * 64

    copy = copy_run(hashes["run_dir"], tmp_path / "run", edit)
    assert main(["reproduce", str(copy), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"added: {first}" in err and f"changed: {second}" in err
    assert "removed: 3/gone.png" in err


def test_reproduce_replays_the_recipe_found_learning_rates_and_weight_decay(tmp_path, capsys):
    from conftest import DIGITS

    output = tmp_path / "run"
    options = "--recipe auto --head-lr auto --finetune-lr auto --head-epochs 2 --finetune-epochs 2"
    options += " --weight-decay 0.01"  # any decay changes the weights: reproduce must carry it
    result = run_cli(
        "train", DIGITS / "train", *TINY_TRAIN, *options.split(), "--seed", "3", "--output", output
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((output / "run.json").read_text())
    assert record["training"]["fallback_to_head"] is True and record["data"]["flip"] == "auto"
    assert record["training"]["fallback_to_probe"] is record["training"]["refit_probe"] is True
    # 240 training images: auto sets the cosine schedule and warm-up (the rate stays "auto")
    training = record["training"]
    assert (training["finetune_schedule"], training["warmup_epochs"]) == ("cosine", 1)
    assert training["head_lr"] == training["finetune_lr"] == "auto"
    assert record["training"]["weight_decay"] == 0.01
    assert {"head_lr", "finetune_lr", "fallback"} <= set(record["decisions"])
    code = main(["reproduce", str(output), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and out.splitlines()[-1] == "MATCH", out
    # A recorded rate that is no rate: one message, exit 2 (it was a KeyError traceback).
    del record["decisions"]["head_lr"]["suggestion"]
    (output / "run.json").write_text(json.dumps(record))  # unsigned: run.json is not hashed
    assert main(["reproduce", str(output), "--quiet"]) == 2
    assert "decisions.head_lr.suggestion should be" in capsys.readouterr().err


def test_reproducibility_imports_no_stage_and_reproduce_run_is_public():
    """No import circle: reproduce_run (which needs artifacts and finetuner) has its own module."""
    import ast

    import keras_ft
    from keras_ft.runs import reproducibility
    from keras_ft.tools.reproduce import reproduce_run

    tree = ast.parse(Path(reproducibility.__file__).read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert {m for m in imported if m.startswith("keras_ft")} <= {"keras_ft.utils.errors"}
    assert keras_ft.reproduce_run is reproduce_run
