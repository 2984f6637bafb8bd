"""keras_ft: transfer learning on image folders with Keras 3 and TensorFlow.

>>> import keras_ft
>>> data = keras_ft.ImageFolder("flowers/train", test_dir="flowers/test", image_size=224)
>>> tuner = keras_ft.FineTuner("vgg16", weights="imagenet", seed=42)
>>> tuner.fit(data, head_epochs=10, finetune_epochs=10, unfreeze="block5_conv1")
>>> tuner.save("runs/flowers")
>>> keras_ft.load("runs/flowers").predict(["a.jpg"])
"""

__version__ = "0.1.0"

from keras_ft.artifacts import Predictor, load  # noqa: E402
from keras_ft.backbones import BACKBONES, BackboneSpec, get_backbone  # noqa: E402
from keras_ft.data import ImageFolder  # noqa: E402
from keras_ft.errors import KerasFTError  # noqa: E402
from keras_ft.finetuner import FineTuner  # noqa: E402
from keras_ft.scan import scan_folder  # noqa: E402
from keras_ft.search import tune  # noqa: E402

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "FineTuner",
    "ImageFolder",
    "KerasFTError",
    "Predictor",
    "get_backbone",
    "load",
    "scan_folder",
    "tune",
]
