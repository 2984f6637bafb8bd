import keras
import numpy as np
import pytest

from keras_ft.backbones import BACKBONES, describe_backbones, get_backbone
from keras_ft.errors import KerasFTError
from keras_ft.model import Preprocess

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
