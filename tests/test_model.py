import keras
import numpy as np
import pytest
from conftest import tiny_backbone

from keras_ft.config import ModelConfig, from_dict, to_dict
from keras_ft.models.backbones import PREPROCESSING, get_backbone
from keras_ft.models.classifier import (
    Preprocess,
    backbone_of,
    build_classifier,
    freeze_backbone,
    preprocessing_layer,
    unfreeze_backbone,
)
from keras_ft.utils.errors import KerasFTError


def classifier(pooling="avg", dense_units=(), backbone=None):
    config = ModelConfig(
        num_classes=3, image_size=(32, 32), pooling=pooling, dense_units=dense_units, seed=1
    )
    return build_classifier(backbone or tiny_backbone(), config, "tf")


@pytest.mark.parametrize("pooling", ["avg", "max", "avgmax", "flatten"])
def test_output_is_a_probability_per_class(pooling):
    model = classifier(pooling, dense_units=(16,))
    probabilities = np.asarray(model(np.full((2, 32, 32, 3), 128.0, "float32")))
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_head_initialisation_is_seeded():
    a, b = classifier(), classifier()
    head = [layer.name for layer in a.layers if layer.name.startswith(("predictions", "feature"))]
    for name in head:
        for x, y in zip(
            a.get_layer(name).get_weights(), b.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(x, y)


def test_no_augmentation_layers_in_the_model():
    model = classifier()
    assert not any("random" in type(layer).__name__.lower() for layer in model.layers)


def test_backbone_batchnorm_stays_in_inference_mode_during_training():
    model = classifier()
    bn = backbone_of(model).get_layer("bn_a")
    before = [np.copy(w) for w in bn.get_weights()]
    unfreeze_backbone(model, "all")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    model.fit(images, np.arange(8) % 3, epochs=1, verbose=0)
    for x, y in zip(before, bn.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)  # moving statistics and gamma/beta unchanged


def test_train_batchnorm_trains_the_backbones_batchnorm_as_keras_does():
    model = classifier()
    bn = backbone_of(model).get_layer("bn_a")
    before = [np.copy(w) for w in bn.get_weights()]  # gamma, beta, moving mean and variance
    assert unfreeze_backbone(model, "all", train_batchnorm=True) == 6  # + gamma and beta
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    model.fit(images, np.arange(8) % 3, epochs=1, verbose=0)
    assert not any(np.array_equal(x, y) for x, y in zip(before, bn.get_weights(), strict=True))


def test_head_feature_norm_trains_in_phase_1_and_is_frozen_in_phase_2():
    model = classifier()
    norm = model.get_layer("feature_norm")
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    labels = np.arange(8) % 3

    def fit_one_epoch():
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        before = [np.copy(w) for w in norm.get_weights()]
        model.fit(images, labels, epochs=1, verbose=0)
        return [np.array_equal(x, y) for x, y in zip(before, norm.get_weights(), strict=True)]

    freeze_backbone(model)
    assert norm.trainable and not any(fit_one_epoch())  # gamma, beta and statistics move
    unfreeze_backbone(model, "all")
    assert not norm.trainable and all(fit_one_epoch())  # inference mode: nothing moves
    freeze_backbone(model)  # a later phase 1 (e.g. lr_find's head sweep) trains it again
    assert norm.trainable


def test_freeze_then_unfreeze_all_keeps_batchnorm_frozen():
    model = classifier()
    freeze_backbone(model)
    assert backbone_of(model).trainable_weights == []
    count = unfreeze_backbone(model, "all")
    backbone = backbone_of(model)
    assert count == 4  # two convolutions' kernels and biases, not the BatchNorm
    assert not backbone.get_layer("bn_a").trainable


def test_unfreeze_from_a_named_layer():
    backbone = get_backbone("vgg16").build((32, 32), weights=None)
    model = classifier(backbone=backbone)
    unfreeze_backbone(model, "block5_conv1")
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3"}


def test_unfreeze_top_n_layers():
    model = classifier()
    unfreeze_backbone(model, 2)  # relu_b and conv_b
    backbone = backbone_of(model)
    assert backbone.get_layer("conv_b").trainable
    assert not backbone.get_layer("conv_a").trainable


def test_unknown_unfreeze_layer_lists_real_names():
    model = classifier()
    with pytest.raises(KerasFTError, match="no layer named 'block9_conv1'") as error:
        unfreeze_backbone(model, "block9_conv1")
    assert "conv_b" in str(error.value)
    with pytest.raises(KerasFTError, match="no layer named '²'"):  # not a number of layers
        unfreeze_backbone(model, "²")


@pytest.mark.parametrize("mode", PREPROCESSING)
def test_standard_preprocessing_layers_compute_what_preprocess_does(mode):
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    pixels[0, 0, :3] = [[0.0, 0.0, 0.0], [255.0, 255.0, 255.0], [123.68, 116.779, 103.939]]
    layer = preprocessing_layer(mode)
    assert type(layer).__module__.startswith("keras.") and layer.name == "preprocess"
    got, expected = np.asarray(layer(pixels)), np.asarray(Preprocess(mode)(pixels))
    if mode in ("caffe", "none"):  # a permutation times 1.0 plus the bias: exact
        np.testing.assert_array_equal(got.view("uint32"), expected.view("uint32"))
    else:  # x * (1 / 127.5) where Preprocess has x / 127.5: one float32 rounding apart
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_caffe_preprocessing_stays_frozen():
    config = ModelConfig(num_classes=3, image_size=(32, 32), seed=1)
    model = build_classifier(tiny_backbone(), config, "caffe")
    layer = model.get_layer("preprocess")
    assert isinstance(layer, keras.layers.Conv2D) and not layer.trainable
    unfreeze_backbone(model, "all")
    assert not layer.trainable and not any(w is layer.kernel for w in model.trainable_weights)


def test_old_records_rebuild_the_preprocess_layer():
    recorded = to_dict(ModelConfig(num_classes=3, image_size=(32, 32)))
    assert recorded.pop("preprocessing_layers") == "keras"
    old = from_dict(ModelConfig, recorded)  # a record from before the option
    assert old.preprocessing_layers == "keras_ft"
    model = build_classifier(tiny_backbone(), old, "tf")
    assert isinstance(model.get_layer("preprocess"), Preprocess)
    with pytest.raises(KerasFTError, match="preprocessing_layers"):
        ModelConfig(num_classes=3, preprocessing_layers="tf")
