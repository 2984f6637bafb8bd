"""keras_ft: transfer learning on image folders with Keras 3 and TensorFlow.

>>> import keras_ft
>>> data = keras_ft.ImageFolder("flowers/train", test_dir="flowers/test", image_size=224)
>>> tuner = keras_ft.FineTuner("vgg16", weights="imagenet", seed=42)
>>> tuner.fit(data, head_epochs=10, finetune_epochs=10, unfreeze="block5_conv1")
>>> tuner.save("runs/flowers")
>>> keras_ft.load("runs/flowers").predict(["a.jpg"])

Importing the package does not import TensorFlow: each name below is imported
from its module on first use, so `keras-ft scan`, `keras-ft backbones` and
`--help` start in a fraction of a second. Nor does it let TensorFlow print its
own log lines, unless asked (see `keras_ft.utils.quiet`).
"""

from __future__ import annotations

import importlib

from keras_ft.utils.quiet import import_tensorflow, quiet_tensorflow
from keras_ft.utils.version import __version__ as __version__

quiet_tensorflow()

# Public name -> the module that defines it: what users call, and what those calls return.
_EXPORTS = {
    # Data, model, training.
    "ImageFolder": "keras_ft.data.folder",
    "ScanReport": "keras_ft.data.scan",
    "scan_folder": "keras_ft.data.scan",
    "FineTuner": "keras_ft.task.finetuner",
    "TrainingHistory": "keras_ft.training.history",
    "LRFinderResult": "keras_ft.training.lr_find",
    "DataConfig": "keras_ft.config",
    "ModelConfig": "keras_ft.config",
    "TrainingConfig": "keras_ft.config",
    # Backbones.
    "BACKBONES": "keras_ft.models.backbones",
    "BackboneSpec": "keras_ft.models.backbones",
    "get_backbone": "keras_ft.models.backbones",
    "register_backbone": "keras_ft.models.backbones",
    "list_backbones": "keras_ft.models.backbones",
    "rank": "keras_ft.tools.ranking",
    "RankResult": "keras_ft.tools.ranking",
    # Search.
    "tune": "keras_ft.tools.search",
    "SearchResult": "keras_ft.tools.search",
    # Run directories and deployment.
    "load": "keras_ft.runs.loading",
    "Predictor": "keras_ft.runs.loading",
    "reproduce_run": "keras_ft.tools.reproduce",
    "export": "keras_ft.runs.deploy",
    "export_for_serving": "keras_ft.runs.artifacts",
    # Distribution and errors.
    "get_distribution": "keras_ft.training.distribute",
    "KerasFTError": "keras_ft.utils.errors",
    "WorkerLostError": "keras_ft.utils.errors",
}

__all__ = sorted(_EXPORTS)  # and __version__

# The modules above that import no TensorFlow (the others load it quietly first).
_WITHOUT_TENSORFLOW = (
    "keras_ft.data.scan",
    "keras_ft.config",
    "keras_ft.models.backbones",
    "keras_ft.utils.errors",
)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_ft' has no attribute {name!r}")
    if _EXPORTS[name] not in _WITHOUT_TENSORFLOW:
        import_tensorflow()
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS})
