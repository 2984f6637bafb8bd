"""Ranking backbones and layers from frozen features: the table, the files, the unfreeze rule."""

from __future__ import annotations

import csv
import json

import keras
import pytest

from keras_ft.models.backbones import get_backbone
from keras_ft.tools.ranking import (
    _recommend_backbone,
    _recommend_layer,
    parse_candidate,
    rank,
    stage_outputs,
)
from keras_ft.utils.errors import KerasFTError
from tests.conftest import run_cli, write_folder

CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("rank") / "train", CLASSES, per_class=14, size=32)


@pytest.fixture(scope="module")
def vgg16():
    return keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3))


@pytest.fixture(scope="module")
def layer_ranking(three_classes, tmp_path_factory):
    output = tmp_path_factory.mktemp("layers")
    result = rank(
        three_classes,
        backbones=["vgg16=none"],
        image_size=32,
        layers="auto",
        output=output,
        batch_size=8,
        verbose=False,
    )
    return result, output


def test_auto_layers_are_each_stage_output(vgg16):
    assert stage_outputs(vgg16) == [
        "block1_conv2",
        "block2_conv2",
        "block3_conv3",
        "block4_conv3",
        "block5_conv3",
        "block5_pool",
    ]


def test_rank_is_public():
    import keras_ft

    assert keras_ft.rank is rank


def test_candidates_name_their_own_weights():
    assert parse_candidate("VGG16", "imagenet") == ("vgg16", "vgg16", "imagenet")
    assert parse_candidate("vgg16=none", "imagenet") == ("vgg16:none", "vgg16", None)
    assert parse_candidate("vgg16=w/hed.weights.h5", None) == (
        "vgg16:hed",
        "vgg16",
        "w/hed.weights.h5",
    )
    with pytest.raises(KerasFTError, match="Unknown backbone 'nope'"):
        parse_candidate("nope", None)


def _rows(scores):
    names = ["block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_pool"]
    return [
        {"layer": n, "logme": s, "backbone": "vgg16", "weights": None}
        for n, s in zip(names, scores, strict=True)
    ]


def test_unfreeze_rule_takes_the_layer_after_the_earliest_near_best(vgg16):
    spec = get_backbone("vgg16")
    # best 1.0, worst 0.0: within 10% means >= 0.9; block3_conv3 is the first such.
    chosen = _recommend_layer(_rows([0.0, 0.5, 0.95, 1.0, 0.9]), vgg16, spec, 0.1)
    assert (chosen["layer"], chosen["unfreeze"]) == ("block3_conv3", "block4_conv1")
    assert "best - 0.1 x (best - worst)" in chosen["rule"]
    # Only the last layer is near the best: adapt the top only, the backbone's usual point.
    chosen = _recommend_layer(_rows([0.0, 0.1, 0.2, 0.3, 1.0]), vgg16, spec, 0.1)
    assert (chosen["layer"], chosen["unfreeze"]) == ("block5_pool", "block5_conv1")
    # A wider margin picks an earlier layer.
    chosen = _recommend_layer(_rows([0.0, 0.5, 0.95, 1.0, 0.9]), vgg16, spec, 0.6)
    assert (chosen["layer"], chosen["unfreeze"]) == ("block2_conv2", "block3_conv1")


def test_probes_of_equal_accuracy_are_ordered_by_validation_loss():
    """On a few validation images both probes may classify every one: the lower loss is
    the better probe, and the recommendation says so when LogME prefers the other."""
    rows = [
        {"candidate": c, "backbone": c, "weights": None, "logme": logme, "h_score": 1.0}
        | {"probe_val_accuracy": 1.0, "probe_val_loss": loss}
        for c, logme, loss in (("vgg16", 2.0, 0.30), ("efficientnet_lite0", 1.0, 0.05))
    ]
    text = _recommend_backbone(rows)["text"]
    assert text.startswith("recommended backbone: vgg16 (highest LogME)")
    assert "the linear probe prefers efficientnet_lite0" in text
    rows[1]["probe_val_loss"] = 0.40
    assert "prefers" not in _recommend_backbone(rows)["text"]
    rows[0]["probe_val_accuracy"] = 0.75  # accuracy first, whatever the loss
    assert "the linear probe prefers efficientnet_lite0" in _recommend_backbone(rows)["text"]


def test_layer_ranking_scores_every_stage_and_writes_the_files(layer_ranking):
    result, output = layer_ranking
    assert result.mode == "layers"
    assert sorted(r["layer"] for r in result.rows) == sorted(
        [
            "block1_conv2",
            "block2_conv2",
            "block3_conv3",
            "block4_conv3",
            "block5_conv3",
            "block5_pool",
        ]
    )
    scores = [r["logme"] for r in result.rows]
    assert scores == sorted(scores, reverse=True)  # ranked by LogME
    dims = {r["layer"]: r["dimension"] for r in result.rows}
    assert dims["block1_conv2"] == 64 and dims["block3_conv3"] == 256 and dims["block5_pool"] == 512
    assert all(0.0 <= r["probe_val_accuracy"] <= 1.0 for r in result.rows)
    assert all(r["probe_val_loss"] > 0.0 for r in result.rows)
    assert "probe val acc      val loss" in result.table().splitlines()[0]
    record = json.loads((output / "rank.json").read_text())
    assert record["rows"] == json.loads(json.dumps(result.rows))
    assert record["recommendation"]["unfreeze"].startswith("block")
    with open(output / "rank.csv") as handle:
        assert [row["candidate"] for row in csv.DictReader(handle)] == [
            r["candidate"] for r in result.rows
        ]
    assert (output / "rank.png").read_bytes()[:4] == b"\x89PNG"
    assert "recommended: --unfreeze" in result.table()


def test_ranking_refuses_unknown_layers_and_several_backbones_with_layers(three_classes):
    with pytest.raises(KerasFTError, match=r"\['conv9'\] are not layers.*block5_pool"):
        rank(three_classes, ["vgg16=none"], image_size=32, layers=["conv9"], batch_size=8)
    with pytest.raises(KerasFTError, match="exactly one backbone, received 2"):
        rank(three_classes, ["vgg16", "resnet50"], layers="auto")
    with pytest.raises(KerasFTError, match="lies inside the data folder"):
        rank(three_classes, ["vgg16=none"], output=three_classes / "red" / "scores")
    assert not (three_classes / "red" / "scores").exists()


def test_cli_rank_prints_the_table_and_refuses_bad_input(three_classes, tmp_path):
    result = run_cli(
        "rank",
        three_classes,
        "--backbones",
        "testnet=none",
        "vgg16=none",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--quiet",
        "--output",
        tmp_path / "out",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["candidate", "dim", "seconds"]
    assert {lines[1].split()[0], lines[2].split()[0]} == {"testnet:none", "vgg16:none"}
    assert "recommended backbone:" in result.stdout
    assert json.loads((tmp_path / "out" / "rank.json").read_text())["mode"] == "backbones"
    bad = run_cli("rank", three_classes, "--backbones", "vgg16", "vgg19", "--layers", "auto")
    assert bad.returncode == 2
    assert "error: Ranking layers needs exactly one backbone" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_rank_scores_the_probe_with_the_variance_floor():
    """`rank`'s probe loss orders probes of equal accuracy: a feature one training image
    activates must not decide it (`PROBE_VARIANCE_FLOOR`)."""
    import numpy as np

    from keras_ft.models.probe import PROBE_VARIANCE_FLOOR, linear_probe
    from keras_ft.tools import ranking

    rng = np.random.default_rng(5)
    labels = np.arange(60) % 3
    features = rng.normal(size=(3, 8))[labels] + rng.normal(size=(60, 8))
    rare = np.zeros((60, 1))
    rare[0], rare[45:] = 1e-3, 1.0  # one training image; every validation image
    features = np.concatenate([features, rare], axis=1)
    split = (features[:45], labels[:45], features[45:], labels[45:], 3)
    scores = ranking._score(*split)
    floored = linear_probe(*split, variance_floor=PROBE_VARIANCE_FLOOR)
    assert scores["probe_val_loss"] == floored.validation_loss
    assert scores["probe_val_loss"] < linear_probe(*split).validation_loss
