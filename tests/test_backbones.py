import json
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import copy_run, run_cli, tiny_backbone, write_folder

import keras_ft
from keras_ft.models.backbones import (
    _REGISTRY,
    BACKBONES,
    BackboneSpec,
    describe_backbones,
    get_backbone,
    list_backbones,
    register_backbone,
)
from keras_ft.models.classifier import Preprocess
from keras_ft.utils.errors import KerasFTError

REQUIRED = (
    "vgg16",
    "vgg19",
    "resnet50",
    "resnet50v2",
    "mobilenetv2",
    "mobilenetv3small",
    "mobilenetv3large",
    "efficientnetb0",
    "efficientnetv2b0",
    "densenet121",
    "inceptionv3",
    "xception",
    "convnexttiny",
)

# The keras.applications module whose preprocess_input each family uses.
APPLICATION_MODULE = {
    "vgg16": "vgg16",
    "vgg19": "vgg19",
    "resnet50": "resnet50",
    "resnet50v2": "resnet_v2",
    "mobilenetv2": "mobilenet_v2",
    "mobilenetv3small": "mobilenet_v3",
    "mobilenetv3large": "mobilenet_v3",
    "efficientnetb0": "efficientnet",
    "efficientnetv2b0": "efficientnet_v2",
    "densenet121": "densenet",
    "inceptionv3": "inception_v3",
    "xception": "xception",
    "convnexttiny": "convnext",
}


def tiny_builder(include_top=False, weights=None, input_shape=(32, 32, 3)):
    """A user's builder, with the arguments of a keras.applications constructor."""
    assert not include_top and weights is None
    return tiny_backbone(input_shape[0])


TINY = BackboneSpec("tinynet", tiny_builder, "tf", default_size=32, finetune_from="conv_b")


@pytest.fixture(scope="module")
def registered():
    """`TINY` registered for the module's tests, and unregistered after them."""
    register_backbone(TINY)
    yield TINY
    del _REGISTRY[TINY.name]


def test_registry_has_every_required_backbone():
    assert set(REQUIRED) <= set(BACKBONES)
    table = describe_backbones()
    for name in REQUIRED:
        assert name in table


@pytest.mark.parametrize("name", REQUIRED)
def test_preprocessing_matches_keras_preprocess_input(name):
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    module = getattr(keras.applications, APPLICATION_MODULE[name])
    expected = module.preprocess_input(pixels.copy())
    got = Preprocess(get_backbone(name).preprocessing)(pixels)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", REQUIRED)
def test_every_backbone_builds_at_its_minimum_size(name):
    spec = get_backbone(name)
    size = max(spec.min_size, 32)
    model = spec.build((size, size), weights=None)
    assert model.input_shape == (None, size, size, 3)
    assert spec.finetune_from in [layer.name for layer in model.layers]
    features = model(np.zeros((1, size, size, 3), "float32"))
    assert features.shape[0] == 1 and len(features.shape) == 4


def test_names_are_case_and_separator_insensitive():
    assert get_backbone("ResNet50_V2").name == "resnet50v2"
    assert get_backbone("EfficientNet-B0").name == "efficientnetb0"


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(KerasFTError, match="Unknown backbone 'vgg17'") as error:
        get_backbone("vgg17")
    assert "vgg16" in str(error.value) and "convnexttiny" in str(error.value)


def test_image_size_below_minimum_names_the_minimum():
    with pytest.raises(KerasFTError, match="below the minimum of 75 px for backbone 'inceptionv3'"):
        get_backbone("inceptionv3").build((64, 64), weights=None)


def test_missing_weights_file_is_named(tmp_path):
    path = tmp_path / "nope.weights.h5"
    with pytest.raises(KerasFTError, match="does not exist"):
        get_backbone("vgg16").build((32, 32), weights=str(path))


def test_weights_file_of_another_backbone_is_refused(tmp_path):
    path = tmp_path / "mobilenet.weights.h5"
    get_backbone("mobilenetv2").build((32, 32), weights=None).save_weights(str(path))
    with pytest.raises(KerasFTError, match="does not fit backbone 'vgg16'"):
        get_backbone("vgg16").build((32, 32), weights=str(path))


def test_weights_file_round_trip_loads_exactly(tmp_path):
    path = tmp_path / "mnv3.weights.h5"
    source = get_backbone("mobilenetv3small").build((32, 32), weights=None)
    source.save_weights(str(path))
    loaded = get_backbone("mobilenetv3small").build((48, 48), weights=str(path))
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        BACKBONES["mine"] = get_backbone("vgg16")


def test_registering_a_taken_name_needs_overwrite(registered):
    with pytest.raises(KerasFTError, match="'tinynet' is already registered.*overwrite=True"):
        register_backbone(BackboneSpec("tinynet", tiny_builder, "caffe"))
    replaced = register_backbone(BackboneSpec("tinynet", tiny_builder, "caffe"), overwrite=True)
    assert get_backbone("Tiny_Net") is replaced
    register_backbone(registered, overwrite=True)


def test_register_backbone_decorates_a_builder_and_returns_it():
    try:

        @register_backbone(preprocessing="tf", default_size=32, finetune_from="conv_b")
        def tiny_deco_net(include_top=False, weights=None, input_shape=(32, 32, 3)):
            return tiny_backbone(input_shape[0])

        spec = get_backbone("TinyDecoNet")  # the function's name, as names are looked up
        assert spec.builder is tiny_deco_net
        assert (spec.preprocessing, spec.default_size, spec.min_size) == ("tf", 32, 32)
        assert spec.finetune_from == "conv_b"
        assert spec.describe()["builder"].startswith("test_backbones.")
        assert spec.describe()["builder"].endswith(".tiny_deco_net")
        assert "conv_b" in [layer.name for layer in spec.build((32, 32), weights=None).layers]
        named = register_backbone("deconamed", preprocessing="caffe", builder_kwargs={"a": 1})
        assert named(tiny_builder) is tiny_builder
        assert get_backbone("deconamed").builder_kwargs == (("a", 1),)
        with pytest.raises(KerasFTError, match="'deconamed' is already registered"):
            register_backbone("deconamed", preprocessing="tf")(tiny_builder)
        register_backbone("deconamed", overwrite=True, preprocessing="tf")(tiny_builder)
        assert get_backbone("deconamed").preprocessing == "tf"
    finally:
        for name in ("tinydeconet", "deconamed"):
            _REGISTRY.pop(name, None)
    assert "tinydeconet" not in BACKBONES


def test_the_decorator_checks_the_spec_it_makes_and_the_call_form_takes_no_fields():
    with pytest.raises(KerasFTError, match="Invalid `preprocessing`.*None"):
        register_backbone()(tiny_builder)
    with pytest.raises(KerasFTError, match="Invalid `name`.*Use 'tinyx'"):
        register_backbone("Tiny_X", preprocessing="tf")(tiny_builder)
    with pytest.raises(KerasFTError, match="takes the backbone's fields from the spec"):
        register_backbone(TINY, preprocessing="caffe")
    assert "tinyx" not in BACKBONES


def test_list_backbones_lists_the_registry_filtered_by_shell_patterns(registered):
    assert list_backbones() == list(BACKBONES)
    assert list_backbones()[:2] == ["vgg16", "vgg19"] and "tinynet" in list_backbones()
    assert list_backbones("resnet*") == ["resnet50", "resnet50v2"]
    assert list_backbones("EfficientNet_Lite*") == ["efficientnetlite0"]
    assert list_backbones("mobilenetv[23]*") == [
        "mobilenetv2",
        "mobilenetv3small",
        "mobilenetv3large",
    ]
    assert list_backbones("tiny*") == ["tinynet"]
    assert list_backbones("alexnet*") == []
    assert keras_ft.list_backbones is list_backbones
    with pytest.raises(KerasFTError, match="Invalid `pattern`"):
        list_backbones(["resnet*"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("Tiny_Net", tiny_builder, "tf"), "Invalid `name`.*Use 'tinynet'"),
        (("tinynet", 3, "tf"), "Invalid `builder`"),
        (("tinynet", tiny_builder, "rgb"), "Invalid `preprocessing`.*'rgb'"),
        (("tinynet", tiny_builder, "tf", 16, 32), "Invalid `default_size`.*>= min_size \\(32\\)"),
    ],
)
def test_a_bad_spec_names_the_field(fields, message):
    with pytest.raises(KerasFTError, match=message):
        BackboneSpec(*fields)


def test_register_refuses_what_is_not_a_spec():
    with pytest.raises(KerasFTError, match="expects a keras_ft.BackboneSpec, received dict"):
        register_backbone({"name": "x"})


def test_a_registered_backbone_is_listed_and_used_like_a_built_in_one(registered):
    row = next(line for line in describe_backbones().splitlines() if line.startswith("tinynet"))
    assert "test_backbones.tiny_builder" in row and "conv_b" in row
    tuner = keras_ft.FineTuner("tinynet", weights=None)
    assert tuner.preprocessing == "tf"
    with pytest.raises(KerasFTError, match="below the minimum of 32 px for backbone 'tinynet'"):
        tuner.build_backbone(24)
    model = tuner.build((32, 32), num_classes=2)
    assert model.get_layer("tiny").get_layer("conv_b") is not None


# One or two epochs of a random backbone often end below the linear probe, which warns.
BELOW_PROBE = pytest.mark.filterwarnings("ignore:Fine-tuning reached:UserWarning")


@pytest.fixture(scope="module")
def registered_run(registered, tmp_path_factory):
    """A run trained (1 + 1 epochs, 32 px) with the registered `tinynet`, saved."""
    root = tmp_path_factory.mktemp("registered")
    data = keras_ft.ImageFolder(
        write_folder(root / "train"), image_size=32, batch_size=8, validation_split=0.25, seed=0
    )
    tuner = keras_ft.FineTuner("tinynet", weights=None, seed=0)
    with warnings.catch_warnings():  # one epoch of a random backbone: below the linear probe
        warnings.simplefilter("ignore", UserWarning)
        tuner.fit(data, head_epochs=1, finetune_epochs=1, verbose=0, tensorboard_dir=None)
    return tuner.save(root / "run"), data


@BELOW_PROBE
def test_a_registered_backbone_trains_records_its_name_and_reproduces(registered_run):
    run_dir, _ = registered_run
    record = json.loads((Path(run_dir) / "run.json").read_text())
    assert record["model"]["backbone"] == "tinynet"
    assert record["backbone"]["builder"] == "test_backbones.tiny_builder"
    result = keras_ft.reproduce_run(run_dir, verbose=0)
    assert result["match"], result
    assert "backbone_weights_sha256" not in result["environment_differences"]
    # A backbone that starts from other weights is named as the difference.
    copy = copy_run(Path(run_dir), Path(run_dir).parent / "edited")
    record = json.loads((copy / "run.json").read_text())
    record["backbone_weights_sha256"] = "0" * 64
    (copy / "run.json").write_text(json.dumps(record))
    differences = keras_ft.reproduce_run(copy, verbose=0)["environment_differences"]
    assert differences["backbone_weights_sha256"][0] == "0" * 64


@BELOW_PROBE
def test_tune_searches_a_registered_backbone(registered_run, tmp_path):
    _, data = registered_run
    result = keras_ft.tune(
        data,
        tmp_path / "search",
        trials=2,
        backbone="tinynet",
        weights=None,
        head_epochs=1,
        finetune_epochs=1,
        verbose=0,
    )
    assert [row["status"] for row in result.trials] == ["COMPLETED", "COMPLETED"]
    assert {row["unfreeze"] for row in result.trials} <= {"conv_b", "all"}
    assert keras_ft.load(result.best_run_dir).record["model"]["backbone"] == "tinynet"


def test_reproduce_in_a_process_without_the_registration_says_to_register_it(registered_run):
    run_dir, _ = registered_run
    result = run_cli("reproduce", run_dir, "--quiet")
    assert result.returncode == 2, result.stderr
    assert "Backbone 'tinynet' is not registered in this process" in result.stderr
    assert "import test_backbones" in result.stderr and "register_backbone" in result.stderr
    assert "Traceback" not in result.stderr


def test_reproduce_refuses_a_keras_model_backbone_and_points_to_the_registry(
    registered_run, tmp_path
):
    run_dir, _ = registered_run

    def as_a_keras_model(record):
        record["backbone"] = None

    copy = copy_run(Path(run_dir), tmp_path / "custom", as_a_keras_model)
    with pytest.raises(KerasFTError, match="custom backbone .*register_backbone"):
        keras_ft.reproduce_run(copy, verbose=0)


@keras.saving.register_keras_serializable("test_backbones")
class Doubling(keras.layers.Layer):
    """A layer class of the user's, which model.keras names and `load` must find."""

    def call(self, x):
        return 2.0 * x


def doubling_builder(include_top=False, weights=None, input_shape=(32, 32, 3)):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, Doubling()(tiny_backbone(input_shape[0])(inputs)), name="doubling")


@BELOW_PROBE
def test_load_without_the_registering_module_names_the_backbone(
    registered_run, monkeypatch, tmp_path
):
    _, data = registered_run
    spec = register_backbone(BackboneSpec("doublingnet", doubling_builder, "tf"))
    try:
        tuner = keras_ft.FineTuner("doublingnet", weights=None, seed=0)
        tuner.fit(data, head_epochs=1, finetune_epochs=0, verbose=0, tensorboard_dir=None)
        run_dir = tuner.save(tmp_path / "run")
    finally:
        del _REGISTRY[spec.name]
    monkeypatch.delitem(keras.saving.get_custom_objects(), "test_backbones>Doubling")
    with pytest.raises(KerasFTError) as error:
        keras_ft.load(run_dir)
    message = str(error.value)
    assert "uses the layer class Doubling" in message
    assert "Backbone 'doublingnet' is not registered" in message
    assert "import test_backbones" in message


def test_an_installed_plugin_is_listed_and_in_every_loop_from_a_fresh_process():
    """The suite's own plugin package, tests/plugins (a `keras_ft.backbones` entry point, and
    nothing registered by hand), is installed in every process the suite starts: its backbone
    `testnet` trains, resumes and reproduces in fresh processes in test_resume,
    test_reproducibility and test_distribute. Here: `keras-ft backbones` lists it, and a first
    loop over BACKBONES sees it with a lookup inside the loop (which used to load the plugins
    mid-loop: 'dictionary changed size during iteration')."""
    script = "from keras_ft.cli.main import main\nmain(['backbones'])\n"
    script += "from keras_ft.models.backbones import BACKBONES, get_backbone\n"
    script += "print([name for name in BACKBONES if get_backbone(name)], len(BACKBONES))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    *table, looped = result.stdout.splitlines()
    assert ["testnet", "testnet_pkg.testnet", "tf"] in [row.split()[:3] for row in table]
    assert looped.split("]")[0].endswith("'testnet'")
    with pytest.raises(TypeError):
        keras_ft.BACKBONES["mine"] = keras_ft.BACKBONES["testnet"]


def test_an_unknown_backbone_suggests_the_closest_names():
    with pytest.raises(KerasFTError, match=r"Unknown backbone 'vgg61'\. Did you mean 'vgg16'\?"):
        get_backbone("vgg61")
    with pytest.raises(KerasFTError, match=r"Did you mean 'resnet50v2'\?"):
        get_backbone("ResNet50-V3")
    with pytest.raises(KerasFTError) as error:
        get_backbone("alexnet")
    assert "Did you mean" not in str(error.value)  # nothing close: the list only


def test_an_unknown_unfreeze_layer_suggests_the_closest_names():
    from keras_ft.models.classifier import unknown_layer_message

    names = [f"block{b}_conv{c}" for b in range(1, 6) for c in range(1, 4)] + ["block5_pool"]
    message = unknown_layer_message("block5_conv9", "vgg16", names)
    assert "no layer named 'block5_conv9' in backbone 'vgg16'. Did you mean " in message
    assert "'block5_conv1', 'block5_conv2' or 'block5_conv3'?" in message
    message = unknown_layer_message("blokc5_pool", "vgg16", names)
    assert "Did you mean 'block5_pool'?" in message
    assert "Did you mean" not in unknown_layer_message("dense", "vgg16", names)
