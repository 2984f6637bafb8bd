"""The `keras-ft` commands that look before training: `scan` (a data folder), `rank`
(backbones, or one backbone's layers, on one) and `backbones` (those registered)."""

from __future__ import annotations

from keras_ft.cli.common import printable_lines
from keras_ft.utils.text import printable


def scan(args) -> int:
    from keras_ft.data.scan import scan_folder

    options = dict(cache=not args.no_cache, quiet=args.quiet)
    reports = [scan_folder(args.data_dir, **options)]
    if args.test_dir:
        reports.append(scan_folder(args.test_dir, training=reports[0], **options))
    print("\n\n".join(report.summary() for report in reports))
    refuse = [f"{len(r.bad_files)} problem(s) in {r.root}" for r in reports if r.bad_files]
    if len(reports[0].class_names) < 2:
        refuse.append("a classifier needs at least two class sub-folders")
    if refuse:
        print(printable(f"status: training would refuse this data ({'; '.join(refuse)})"))
        return 2
    warned = sum(len(r.warnings) for r in reports)
    print(f"status: ok, with {warned} warning(s) (not fatal)" if warned else "status: ok")
    return 0


def rank(args) -> int:
    from keras_ft.tools.ranking import rank as rank_candidates

    layers = args.layers
    if layers is not None and len(layers) == 1 and layers[0] in ("auto", "all"):
        layers = layers[0]
    result = rank_candidates(
        args.data_dir,
        backbones=args.backbones,
        weights=args.weights,
        image_size=args.image_size,
        layers=layers,
        pooling=args.pooling,
        output=args.output,
        validation_split=args.validation_split,
        batch_size=args.batch_size,
        seed=args.seed,
        verbose=not args.quiet,
    )
    print(printable_lines(result.table()))
    for path in result.files:
        print(printable(f"wrote {path}"))
    return 0


def backbones(args) -> int:
    from keras_ft.models.backbones import describe_backbones

    print(describe_backbones())
    return 0
