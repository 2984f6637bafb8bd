"""The `keras-ft` commands that use a run directory: `evaluate`, `predict`,
`reproduce`, `export` and `explain`."""

from __future__ import annotations

import json
import os

from keras_ft.cli.common import signing_key_from
from keras_ft.utils.text import printable


def evaluate(args) -> int:
    from keras_ft.data.folder import folder_dataset
    from keras_ft.runs.evaluation import evaluate_model, format_metrics, trained_symmetries
    from keras_ft.runs.loading import load

    predictor = load(args.run_dir, signing_key=signing_key_from(args))
    dataset, _ = folder_dataset(
        args.data_dir, predictor.class_names, predictor.image_size, args.batch_size
    )
    record = predictor.record
    symmetries = trained_symmetries(record.get("data") or {}, record.get("decisions", {}))
    metrics = evaluate_model(
        predictor.model, dataset, predictor.class_names, tta=args.tta, symmetries=symmetries
    )
    print(format_metrics(metrics))
    return 0


def image_files(paths: list[str]) -> list[tuple[str, str | None]]:
    """Each path as `(path, None)`, a folder replaced by the image files under it (by the
    extensions the scan reads, in natural order); an empty folder as `(folder, error)`."""
    from keras_ft.data.decode import image_extensions
    from keras_ft.data.scan import natural_key

    found = []
    for path in paths:
        if not os.path.isdir(path):
            found.append((path, None))
            continue
        images = [
            os.path.join(folder, name)
            for folder, _, names in os.walk(path)
            for name in names
            if os.path.splitext(name)[1].lower() in image_extensions()
        ]
        found += [(image, None) for image in sorted(images, key=natural_key)] or [
            (
                path,
                f"Folder '{printable(path)}' holds no image files; pass image files or "
                "folders holding them.",
            )
        ]
    return found


def predict(args) -> int:
    from keras_ft.runs.loading import load
    from keras_ft.utils.errors import KerasFTError

    predictor = load(args.run_dir, signing_key=signing_key_from(args))
    status = 0
    for path, error in image_files(args.images):
        if error:
            print(json.dumps({"path": path, "error": error}))
            status = 2
            continue
        try:
            result = predictor.predict([path], top_k=args.top_k, tta=args.tta)[0]
            print(json.dumps({"path": path, **result}))
        except KerasFTError as error:
            print(json.dumps({"path": path, "error": str(error)}))
            status = 2
    return status


def reproduce(args) -> int:
    from keras_ft.tools.reproduce import reproduce_run

    result = reproduce_run(
        args.run_dir,
        args.data,
        args.test_dir,
        verbose=0 if args.quiet else "auto",
        signing_key=signing_key_from(args),
    )
    print(f"recorded weights:   {result['recorded']}")
    print(f"reproduced weights: {result['reproduced']}")
    for key, (then, now) in result["environment_differences"].items():
        print(printable(f"environment differs: {key}: {then} (run) vs {now} (now)"))
    print("MATCH" if result["match"] else "MISMATCH")
    return 0 if result["match"] else 1


def export(args) -> int:
    from keras_ft.runs.deploy import export as export_run
    from keras_ft.runs.deploy import summary

    result = export_run(
        args.run_dir,
        args.output,
        format=args.format,
        quantize=args.quantize,
        version=args.version,
        test_dir=args.test_dir,
        calibration_dir=args.calibration_dir,
        calibration_images=args.calibration_images,
        max_images=args.max_images,
        seed=args.seed,
        signing_key=signing_key_from(args),
    )
    print(summary(result))
    return 0 if result.passed else 1


def explain(args) -> int:
    from keras_ft.runs.explain import explain as explain_images
    from keras_ft.runs.output import check_destination
    from keras_ft.utils.errors import KerasFTError

    # The figures may not go into a folder of images given: a later run would read them.
    check_destination(args.output, "--output", data_dirs=filter(os.path.isdir, args.images))
    found = image_files(args.images)
    for _, error in found:
        if error:
            raise KerasFTError(error)
    images = [path for path, _ in found]
    for path in explain_images(
        args.run_dir, images, args.output, signing_key=signing_key_from(args)
    ):
        print(printable(f"wrote {path}"))
    return 0
