"""The `keras-ft` command, run in fresh processes as a user would."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import DIGITS, PLUGINS, TINY_TRAIN, bomb_png, run_cli, write_folder
from PIL import Image

from keras_ft.cli.main import main
from keras_ft.config import TrainingConfig
from keras_ft.utils.errors import KerasFTError


def assert_clean_failure(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def run_here(capsys, *args):
    """Run the CLI in this process (no TensorFlow start-up per call); same result shape."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


@pytest.fixture(scope="module")
def vgg16_run(tmp_path_factory):
    """One real end-to-end `keras-ft train` of VGG16 (untrained weights) on the digits."""
    output = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli(
        "train",
        DIGITS / "train",
        "--test-dir",
        DIGITS / "test",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--head-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--warmup-epochs",  # what `auto` sets at 241 images; its schedule comes from `auto`
        "1",
        "--no-flip",
        "--seed",
        "3",
        "--output",
        output,
    )
    return result, output


def test_train_prints_test_accuracy_and_writes_the_run(vgg16_run):
    result, output = vgg16_run
    assert result.returncode == 0, result.stderr
    assert "test accuracy: 0." in result.stdout or "test accuracy: 1." in result.stdout
    assert "\nepoch 2/2 overall, done - phase 2 epoch 1/1 - " in result.stdout  # one axis
    assert "confusion matrix" in result.stdout
    record = json.loads((output / "run.json").read_text())
    assert record["model"]["backbone"] == "vgg16" and record["model"]["weights"] is None
    assert record["image_counts"]["test"] == 100
    assert record["command"][1:3] == ["train", str(DIGITS / "train")]
    # `--recipe auto` by default: the flags given are kept, the rest follows the 241 images.
    applied = {"fallback_to_head": True, "fallback_to_probe": True, "refit_probe": True}
    applied |= {"finetune_lr": 3e-4, "finetune_schedule": "cosine"}
    assert record["recipe"] == {"name": "auto", "applied": applied}
    assert record["training"]["head_epochs"] == record["training"]["finetune_epochs"] == 1
    # `--warmup-epochs` without `--finetune-schedule`: the cosine schedule comes from `auto`.
    assert record["training"]["warmup_epochs"] == 1
    for log_line in ("I0000", "absl::InitializeLog", "oneDNN", "WARNING:tensorflow"):
        assert log_line not in result.stderr + result.stdout  # TensorFlow's own log lines


@pytest.mark.parametrize(
    "args", [["--help"], ["backbones"], ["scan", str(DIGITS / "train"), "--quiet"]]
)
def test_commands_that_need_no_model_do_not_import_tensorflow(args):
    """With no backbone plugin installed (a plugin's own imports are its own)."""
    path = [p for p in os.environ["PYTHONPATH"].split(os.pathsep) if p != PLUGINS]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    check = "import sys\nfrom keras_ft.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
    check += (
        "except SystemExit:\n    pass\nprint('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", check, *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.stdout.splitlines()[-1] == "False False", result.stdout + result.stderr
    assert result.stderr == ""


def test_a_warning_is_one_line_and_verbose_shows_where_it_was_raised(monkeypatch, capsys):
    import warnings

    from keras_ft.cli import parser

    def warns(args):
        warnings.warn("Something to know about 'data'.", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(parser, "backbones", warns)  # the command `backbones` warns
    result = run_here(capsys, "backbones")
    assert result.returncode == 0 and result.stderr == "warning: Something to know about 'data'.\n"
    with pytest.warns(UserWarning, match="Something to know") as caught:  # Python's, as raised
        result = run_here(capsys, "backbones", "--verbose")
    assert caught[0].filename == __file__ and result.stderr == ""


def test_evaluate_prints_the_same_accuracy(vgg16_run):
    result, output = vgg16_run
    trained = json.loads((output / "metrics.json").read_text())["accuracy"]
    evaluated = run_cli("evaluate", output, DIGITS / "test")
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"test accuracy: {trained:.3f}" in evaluated.stdout


def test_predict_prints_one_json_object_per_image(vgg16_run, tmp_path):
    _, output = vgg16_run
    good = sorted((DIGITS / "test" / "7").iterdir())[:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    result = run_cli("predict", output, *good, bad)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in good] + [str(bad)]
    for line in lines[:2]:
        assert line["label"] in [str(i) for i in range(10)]
        assert 0.0 <= line["probability"] <= 1.0 and len(line["top_k"]) == 3
    assert "Cannot read image" in lines[2]["error"]
    assert result.returncode == 2  # one image failed, the others were still predicted


def test_predict_takes_folders_of_images(vgg16_run, tmp_path, capsys):
    """A folder stands for every image file under it, in natural order; an empty one is an
    error line naming it."""
    _, output = vgg16_run
    first, second = sorted((DIGITS / "test" / "7").iterdir())[:2]
    folder = tmp_path / "photos"
    (folder / "b").mkdir(parents=True)
    shutil.copy(first, folder / "img10.PNG")
    shutil.copy(second, folder / "img9.png")
    shutil.copy(first, folder / "b" / "x.png")
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    result = run_here(capsys, "predict", output, folder, tmp_path / "empty")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [
        str(folder / "b" / "x.png"),
        str(folder / "img9.png"),
        str(folder / "img10.PNG"),
        str(tmp_path / "empty"),
    ]
    assert lines[0]["top_k"] == lines[2]["top_k"]  # the same image twice
    assert lines[3]["error"] == (
        f"Folder '{tmp_path / 'empty'}' holds no image files; pass image files or folders "
        "holding them."
    )
    assert result.returncode == 2


def test_evaluate_and_predict_with_test_time_augmentation(vgg16_run, capsys):
    from keras_ft import load
    from keras_ft.runs.evaluation import TTA_SHIFT, shift

    _, output = vgg16_run
    evaluated = run_here(capsys, "evaluate", output, DIGITS / "test", "--tta")
    assert evaluated.returncode == 0 and "test accuracy: " in evaluated.stdout
    image = sorted((DIGITS / "test" / "7").iterdir())[0]
    plain = json.loads(run_here(capsys, "predict", output, image).stdout)
    augmented = json.loads(run_here(capsys, "predict", output, image, "--tta").stdout)
    predictor = load(output)
    views = predictor.predict_proba([image], tta=True)[0]
    assert augmented["probability"] == pytest.approx(float(views.max()), rel=1e-6)
    assert augmented["probability"] != plain["probability"]  # the shifted views count
    # The run trained with --no-flip: no mirror view, three in all.
    images = predictor.read_batch([image])
    d = TTA_SHIFT * 32
    by_hand = np.mean(
        [
            predictor.model.predict_on_batch(v)
            for v in (images, shift(images, d, d), shift(images, -d, -d))
        ],
        axis=0,
    )[0]
    np.testing.assert_allclose(views, by_hand, rtol=1e-6)


def test_predict_reports_each_bad_image_and_still_predicts_the_rest(vgg16_run, tmp_path, capsys):
    _, output = vgg16_run
    good = sorted((DIGITS / "test" / "7").iterdir())[0]
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 10_000
    with Image.open(good) as image:
        pixels = np.asarray(image.convert("L"))
    webp, tiff = tmp_path / "digit.webp", tmp_path / "digit16.tif"
    Image.fromarray(pixels).convert("RGB").save(webp, lossless=True)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(tiff)  # 16-bit greyscale TIFF
    folder = tmp_path / "a folder.png"
    folder.mkdir()
    images = [good, bomb, folder, webp, tiff, tmp_path / "missing.jpg"]
    result = run_here(capsys, "predict", output, *images)
    assert result.returncode == 2  # some images failed, the others were still predicted
    assert "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in images]
    failed = {line["path"]: line["error"] for line in lines if "error" in line}
    assert sorted(failed) == sorted(str(p) for p in (bomb, folder, tmp_path / "missing.jpg"))
    assert "too large to decode safely" in failed[str(bomb)]
    assert "400000000 pixels" in failed[str(bomb)]
    predicted = [line for line in lines if "error" not in line]
    assert len(predicted) == 3
    # the lossless WebP and the 16-bit TIFF hold the same pixels as the PNG: same prediction
    assert predicted[1]["top_k"] == predicted[0]["top_k"] == predicted[2]["top_k"]


def test_backbones_lists_the_registry(capsys):
    result = run_here(capsys, "backbones")
    assert result.returncode == 0
    assert "vgg16" in result.stdout and "block5_conv1" in result.stdout


def test_scan_reports_counts_and_status(tmp_path, capsys):
    write_folder(tmp_path / "data", ("a", "b"), per_class=3)
    result = run_here(capsys, "scan", tmp_path / "data")
    assert result.returncode == 0
    assert "6 images in 2 classes" in result.stdout and "status: ok" in result.stdout
    (tmp_path / "data" / "a" / "bad.jpg").write_bytes(b"<html></html>")
    result = run_here(capsys, "scan", tmp_path / "data")
    assert result.returncode == 2 and "bad.jpg" in result.stdout


BAD_INPUTS = {
    "missing data directory": (["{tmp}/nowhere"], ["does not exist", "nowhere"]),
    "no class folders": (["{tmp}/flat"], ["has no class sub-folders"]),
    "a single class": (["{tmp}/single"], ["has a single class", "at least two"]),
    "too few images for the split": (
        ["{tmp}/small", "--validation-split", "0.01"],
        ["selects no validation image"],
    ),
    "unknown backbone": (
        ["{tmp}/small", "--backbone", "vgg17"],
        ["Unknown backbone 'vgg17'", "resnet50"],
    ),
    "image size below the minimum": (
        ["{tmp}/small", "--backbone", "xception", "--image-size", "32"],
        ["minimum of 71 px"],
    ),
    "weights file that does not fit": (
        ["{tmp}/small", "--weights", "{tmp}/bad.weights.h5"],
        ["does not fit backbone 'vgg16'"],
    ),
    "test directory with other classes": (
        ["{tmp}/small", "--test-dir", "{tmp}/other"],
        ["different classes", "'zebra'"],
    ),
    "negative seed": (
        ["{tmp}/small", "--seed", "-1"],
        ["Invalid `seed`: expected an int in [0, 4294967295], received -1"],
    ),
    "image size too large": (
        ["{tmp}/small", "--image-size", "100000"],
        ["at most 4096 px", "received (100000, 100000)", "120.0 GB"],
    ),
    "bad validation split": (
        ["{tmp}/small", "--validation-split", "1.5"],
        ["`validation_split`", "[0, 1)"],
    ),
}


@pytest.fixture(scope="module")
def bad_input_dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "flat").mkdir()
    (tmp / "flat" / "x.png").write_bytes(b"")
    write_folder(tmp / "single", ("only",), per_class=2)
    write_folder(tmp / "small", ("a", "b"), per_class=4)
    write_folder(tmp / "other", ("a", "zebra"), per_class=1)
    (tmp / "bad.weights.h5").write_bytes(b"not weights")
    return tmp


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_one_clear_message_and_writes_nothing(case, bad_input_dirs, capsys):
    args, fragments = BAD_INPUTS[case]
    args = [a.format(tmp=bad_input_dirs) for a in args]
    output = bad_input_dirs / f"out-{case.replace(' ', '-')}"
    # The case's own options come last and so override these defaults.
    result = run_here(
        capsys,
        "train",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--output",
        output,
        *args,
    )
    assert_clean_failure(result, *fragments)
    assert not output.exists()


def test_error_messages_escape_control_characters_in_file_names(tmp_path, capsys):
    root = write_folder(tmp_path / "data", ("a", "b"), per_class=2)
    (root / "a" / "bad\x1b[2J.png").write_bytes(b"")
    result = run_here(capsys, "train", root, *TINY_TRAIN, "--output", tmp_path / "run")
    assert_clean_failure(result, "1 file(s) in", f"  {root / 'a'}/bad\\x1b[2J.png: empty file")
    assert "\x1b" not in result.stderr and not (tmp_path / "run").exists()


# Sets the terminal's title, then clears the screen: a file name may hold it.
ESCAPES = "\x1b]0;x\x07\x1b[2J"


def test_paths_are_printed_with_control_characters_escaped(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    data = write_folder(tmp_path / "data", ("a", "b"), per_class=6, size=32)
    image = tmp_path / f"x{ESCAPES}.png"
    image.write_bytes((data / "a" / "000.png").read_bytes())
    run = tmp_path / f"run{ESCAPES}"
    epochs = "--head-epochs 1 --finetune-epochs 0 --batch-size 8 --no-tensorboard".split()
    for args in (
        ("train", data, *TINY_TRAIN, *epochs, "--output", run),
        ("export", run, "--output", tmp_path / f"serving{ESCAPES}"),
        ("explain", run, image, "--output", tmp_path / f"cams{ESCAPES}"),
    ):
        result = run_here(capsys, *args)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout + result.stderr, args[0]
        assert "\\x1b]0;x\\x07\\x1b[2J" in result.stdout, args[0]


def test_existing_output_is_refused_before_training(tmp_path, capsys):
    write_folder(tmp_path / "data", ("a", "b"), per_class=4)
    (tmp_path / "run").mkdir()
    record = '{"format_version": 3, "keras_ft_version": "0.1.0", "manifest": {}}'
    (tmp_path / "run" / "run.json").write_text(record)  # a finished run, as keras_ft records it
    result = run_here(
        capsys, "train", tmp_path / "data", "--weights", "none", "--output", tmp_path / "run"
    )
    assert_clean_failure(result, "already exists", "--overwrite")


def test_evaluate_on_a_path_that_is_not_a_run(tmp_path, capsys):
    assert_clean_failure(
        run_here(capsys, "evaluate", tmp_path, DIGITS / "test"), "is not a keras_ft run directory"
    )


def test_usage_error_exits_2():
    result = run_cli("train")
    assert result.returncode == 2 and "usage:" in result.stderr
    assert "Traceback" not in result.stderr


SPLIT = r"(\d+) train, (\d+) validation \((\d+) of 8 groups\), 0 test"


def test_training_options_reach_the_run_record(tmp_path, capsys):
    write_folder(tmp_path / "data", ("cat", "dog"), per_class=8)
    output = tmp_path / "run"
    options = (
        "--batch-size 4 --head-epochs 1 --finetune-epochs 2 --class-weight cat=2,dog=1 "
        "--label-smoothing 0.1 --finetune-schedule cosine --warmup-epochs 1 "
        "--early-stopping 3 --weight-decay 1e-3 --gradual-unfreeze 2 "
        "--validation-groups ([0-7])\\.png"
    ).split()
    result = run_here(capsys, "train", tmp_path / "data", *TINY_TRAIN, *options, "--output", output)
    assert result.returncode == 0, result.stderr
    # cat/00N.png and dog/00N.png share group N: whole groups of two are held out.
    report = (output / "report" / "report.html").read_text()
    train, validation, held_out = map(int, re.search(SPLIT, report).groups())
    assert train + validation == 16 and validation == 2 * held_out > 0
    record = json.loads((output / "run.json").read_text())
    assert record["data"]["validation_groups"] == r"([0-7])\.png"
    training = record["training"]
    assert isinstance(record["advice"], list)  # what fit's history suggested, if anything
    assert training["class_weight"] == {"cat": 2.0, "dog": 1.0}
    assert (training["label_smoothing"], training["finetune_schedule"]) == (0.1, "cosine")
    assert (training["warmup_epochs"], training["early_stopping"]) == (1, 3)
    assert (training["weight_decay"], training["gradual_unfreeze"]) == (1e-3, 2)


def test_bad_comma_separated_values_are_usage_errors(capsys):
    for flag, value, expected in (
        ("--dense-units", "a,b", "expected comma-separated ints such as 256,128, received 'a,b'"),
        ("--fallback-to-mixes", "0.5,x", "comma-separated fractions such as 0.25,0.5,0.75"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "d", "--output", "o", flag, value])
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    code = main(["train", str(DIGITS / "train"), "--output", "o", "--fallback-to-mixes", "1.5"])
    assert code == 2 and "strictly between 0 and 1" in capsys.readouterr().err


def test_bad_class_weight_is_a_usage_error(tmp_path):
    result = run_cli("train", tmp_path, "--output", tmp_path / "run", "--class-weight", "cat=x")
    assert result.returncode == 2 and "CLASS=WEIGHT pairs" in result.stderr


# Every flag `train` had before its flags were generated from the configs: scripts use them.
TRAIN_FLAGS = (
    "--output --test-dir --backbone --weights --image-size --batch-size --validation-split "
    "--head-epochs --finetune-epochs --head-lr --finetune-lr --momentum --unfreeze --pooling "
    "--dense-units --dropout --no-augment --no-flip --auto-flip --rotation --zoom --contrast "
    "--translation --no-feature-cache --skip-bad --seed --no-determinism --class-weight "
    "--label-smoothing --finetune-schedule --warmup-epochs --early-stopping --recipe "
    "--no-head-augment --fallback-to-head --discriminative-lr --mixed-precision --jit-compile "
    "--no-tensorboard --overwrite --resume --strategy --lr-scaling --quiet --signing-key-file"
).split()


def test_train_flags_come_from_the_config_fields_with_their_help_and_defaults(capsys):
    from keras_ft.cli.parser import build_parser
    from keras_ft.config import DataConfig, ModelConfig, TrainingConfig, defaults_of, options_of

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in TRAIN_FLAGS:
        assert f"{flag} " in text, flag
    assert "phase 2 SGD momentum (default: 0.9)" in text  # the field's help, its default
    args = build_parser().parse_args(["train", "d", "--output", "o"])
    for config in (DataConfig, ModelConfig, TrainingConfig):
        for name, declared in options_of(config).items():
            if declared.flag != "" and declared.cli_default == "field":
                assert getattr(args, name) == defaults_of(config)[name], name
    assert args.image_size is None  # the backbone's default size


def test_a_warmup_without_a_schedule_is_refused_where_auto_sets_none(tmp_path, capsys):
    """Below 150 training images `auto` keeps the constant rate: nothing to warm up into."""
    write_folder(tmp_path / "data", ("cat", "dog"), per_class=8)
    result = run_here(
        capsys, "train", tmp_path / "data", *TINY_TRAIN, "--warmup-epochs", "1",
        "--output", tmp_path / "run",
    )  # fmt: skip
    assert_clean_failure(result, "`warmup_epochs`", "Pass finetune_schedule='cosine' too")
    holds = r"cosine schedule from 150 training images, and this training split holds \d+\."
    assert re.search(holds, result.stderr)
    assert not (tmp_path / "run").exists()


def test_a_flag_only_the_recipe_makes_valid_is_left_to_fit(tmp_path, capsys):
    """`--refit-probe` needs `fallback_to_probe`, which `auto` sets: train accepts it alone,
    and refuses it before reading the data under `--recipe none`."""
    data = write_folder(tmp_path / "data", ("a", "b", "c"), per_class=12, size=32)
    options = "--head-epochs 1 --finetune-epochs 1 --batch-size 8 --no-tensorboard --refit-probe"
    result = run_here(
        capsys, "train", data, *TINY_TRAIN, *options.split(), "--output", tmp_path / "run"
    )
    assert result.returncode == 0, result.stderr
    training = json.loads((tmp_path / "run" / "run.json").read_text())["training"]
    assert training["refit_probe"] is training["fallback_to_probe"] is True
    result = run_here(
        capsys, "train", tmp_path / "missing", *TINY_TRAIN, *options.split(),
        "--recipe", "none", "--output", tmp_path / "none",
    )  # fmt: skip
    assert_clean_failure(result, "Invalid `refit_probe`: expected False unless fallback_to_probe")
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("flags", "auto_accepts"),
    [
        ("--warmup-epochs 3", True),  # auto sets the cosine schedule from 150 images
        ("--gradual-unfreeze 40", True),  # auto trains 60 epochs of phase 2 below 150
        ("--refit-probe", True),
        ("--refit-probe --dense-units 16", False),  # no probe to refit on a hidden layer
        ("--warmup-epochs 99", False),  # more than any size's phase 2
        ("--warmup-epochs 2 --finetune-schedule constant", False),  # the caller's schedule
    ],
)
def test_train_leaves_to_fit_only_what_the_recipe_can_make_valid(flags, auto_accepts):
    from keras_ft.cli.parser import build_parser
    from keras_ft.cli.train import training_config as _training

    args = build_parser().parse_args(["train", "d", "--output", "o", *flags.split()])
    with pytest.raises(KerasFTError, match="Invalid"):
        _training(args)  # --recipe none: the flags as given
    if not auto_accepts:
        with pytest.raises(KerasFTError, match="Invalid"):
            _training(args, "auto")
        return
    config = _training(args, "auto")  # the FineTuner's: `fit` gets the flags given
    assert config == TrainingConfig(unfreeze=config.unfreeze)


def test_the_recipe_flags_help_names_what_auto_sets_by_size():
    from keras_ft.cli.flags import command_parser
    from keras_ft.cli.parser import build_parser

    parser = build_parser()
    train = command_parser(parser, parser.parse_args(["train", "d", "--output", "o"]))
    (recipe,) = [action.help for action in train._actions if action.dest == "recipe"]
    sizes = "60 and 60 below 150 training images, 30 and 30 from 150, 10 and 15 from 500"
    assert f"--head-epochs and --finetune-epochs {sizes};" in recipe
    rates = "--finetune-lr and --warmup-epochs 3e-4 and 1 from 150, 0.001 and 3 from 500"
    assert f"{rates}, with --finetune-schedule cosine" in recipe


def test_the_recipe_keeps_the_training_flags_named_even_at_their_defaults():
    from keras_ft.cli.flags import given_options as _given
    from keras_ft.cli.parser import build_parser

    named = ["--head-epochs", "10", "--finetune-lr=1e-4", "--no-head-augment", "--seed", "1"]
    args = build_parser().parse_args(["train", "d", "--output", "o", *named])
    assert _given(args) == {"head_epochs": 10, "finetune_lr": 1e-4, "head_augment": False}
    with pytest.raises(SystemExit):  # an abbreviation would hide a flag from the recipe
        build_parser().parse_args(["train", "d", "--output", "o", "--head-ep", "10"])
    assert build_parser().parse_args(["tune", "d", "--output", "o"]).recipe == "none"


def test_a_flag_is_given_in_any_form_the_parser_takes_and_left_out_takes_its_default():
    from keras_ft.cli.flags import NOT_GIVEN, given_options
    from keras_ft.cli.parser import build_parser
    from keras_ft.config import FIT_OPTIONS, TrainingConfig, defaults_of

    def parse(*argv):
        return build_parser().parse_args([*argv[:1], "d", "--output", "o", *argv[1:]])

    long_form = parse("train", "--head-epochs", "10", "--no-head-augment")
    assert given_options(long_form) == {"head_epochs": 10, "head_augment": False}
    assert given_options(parse("train", "--head-epochs=10", "--no-head-augment")) == (
        given_options(long_form)
    )
    assert vars(parse("train", "--head-epochs=10", "--no-head-augment")) == vars(long_form)
    # train and probe take no abbreviation; tune and lr-find do, as the long form.
    for command in ("train", "probe"):
        with pytest.raises(SystemExit):
            parse(command, "--head-ep", "10")
    assert given_options(parse("tune", "--finetune-ep", "3")) == {"finetune_epochs": 3}
    assert given_options(parse("lr-find", "--head-ep", "3")) == {"head_epochs": 3}
    # Left out: the field's default, never the sentinel; tune's searched settings: None.
    args = parse("train")
    assert given_options(args) == {} and args.given == ()
    defaults = defaults_of(TrainingConfig)
    assert {name: getattr(args, name) for name in FIT_OPTIONS} == {
        name: defaults[name] for name in FIT_OPTIONS
    }
    tune = parse("tune")
    assert (tune.head_lr, tune.finetune_lr, tune.unfreeze, tune.given) == (None, None, None, ())
    assert NOT_GIVEN not in vars(tune).values()


def test_a_training_flag_given_at_its_default_value_is_kept_by_the_recipe(tmp_path, capsys):
    """`--head-epochs=10` is the default's value: on 36 images the recipe would
    make it 60 were it left out; given, it is kept, and the run records 10 epochs."""
    data = write_folder(tmp_path / "data", ("a", "b", "c"), per_class=12, size=32)
    output = tmp_path / "run"
    options = "--head-epochs=10 --finetune-epochs 0 --batch-size 8 --no-tensorboard".split()
    result = run_here(capsys, "train", data, *TINY_TRAIN, *options, "--output", output)
    assert result.returncode == 0, result.stderr
    record = json.loads((output / "run.json").read_text())
    assert record["training"]["head_epochs"] == 10
    applied = record["recipe"]["applied"]
    assert "head_epochs" not in applied and "finetune_epochs" not in applied
    assert applied["fallback_to_probe"] is True  # left out: the recipe sets it


def test_each_flag_sets_its_field():
    from keras_ft.cli.flags import config_options as _options
    from keras_ft.cli.parser import build_parser
    from keras_ft.cli.train import training_config as _training
    from keras_ft.config import DataConfig, ModelConfig

    given = (
        "--no-determinism --auto-flip --unfreeze 4 --head-lr auto --dense-units 256,128 "
        "--weights none --no-feature-cache --early-stopping 2 --strategy none --no-augment "
        "--fallback-to-mixes 0.25,0.5"
    )
    args = build_parser().parse_args(["train", "d", "--output", "o", *given.split()])
    training = _training(args)
    assert (training.deterministic, training.unfreeze, training.head_lr) == (False, 4, "auto")
    assert (training.feature_cache, training.early_stopping) == (False, 2)
    assert training.fallback_to_mixes == (0.25, 0.5)
    assert training.strategy == "none"
    data = _options(args, DataConfig)
    assert (data["flip"], data["augment"]) == ("auto", False)
    model = _options(args, ModelConfig)
    assert (model["dense_units"], model["weights"], model["head"]) == ((256, 128), None, "dense")
    probe = build_parser().parse_args(["probe", "d", "--output", "o"])
    assert _options(probe, ModelConfig)["head"] == "linear"
    # Flips: decided from the data unless a flag says otherwise.
    for flags, flip in (([], "auto"), (["--flip"], True), (["--no-flip"], False)):
        args = build_parser().parse_args(["train", "d", "--output", "o", *flags])
        assert _options(args, DataConfig)["flip"] is flip
    turns = ([], "auto"), (["--quarter-turns"], True), (["--auto-quarter-turns"], "auto")
    for flags, value in (*turns, (["--no-quarter-turns"], False)):
        args = build_parser().parse_args(["train", "d", "--output", "o", *flags])
        assert _options(args, DataConfig)["quarter_turns"] is value


def test_piped_training_log_is_one_clean_line_per_epoch_with_phases_and_time_left(tmp_path):
    """Written to a file or a pipe, the log holds no terminal control (Keras's bar is
    escapes, backspaces and carriage returns): a line at each phase's start, one line per
    epoch with the overall progress and the time left."""
    data = write_folder(tmp_path / "data", per_class=8)
    tiny = [a for a in TINY_TRAIN if a != "--quiet"]
    epochs = "--head-epochs 2 --finetune-epochs 2 --no-tensorboard".split()
    result = run_cli("train", data, *tiny, *epochs, "--output", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    for control in ("\x1b", "\b", "\r"):
        assert control not in result.stdout + result.stderr, repr(control)
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("Epoch ")]  # Keras's own lines
    epoch_lines = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert [lines[i].split()[1] for i in epoch_lines] == ["1/4", "2/4", "3/4", "4/4"], lines
    expected = (
        r"epoch 1/4 overall, \d+ s left in phase 1, then 2 epochs of phase 2 - phase 1 epoch 1/2",
        r"epoch 2/4 overall, phase 1 done, 2 epochs of phase 2 to go - phase 1 epoch 2/2",
        r"epoch 3/4 overall, \d+ s left - phase 2 epoch 1/2",
        r"epoch 4/4 overall, done - phase 2 epoch 2/2",
    )
    for i, pattern in zip(epoch_lines, expected, strict=True):
        assert re.match(pattern + r" - [\d.]+ s - loss: [\d.]+ - ", lines[i]), lines[i]
        assert " - val_accuracy: " in lines[i], lines[i]
        assert "top_k" not in lines[i]  # three classes: top-5 accuracy is always 1
    head = [i for i, line in enumerate(lines) if line.startswith("phase 1: ")]
    tune = [i for i, line in enumerate(lines) if line.startswith("phase 2: ")]
    assert len(head) == len(tune) == 1, lines
    assert head[0] < epoch_lines[0] and epoch_lines[1] < tune[0] < epoch_lines[2]
    phase_1 = "phase 1: training the head on the frozen backbone, Adam lr 0.001, 2 epochs"
    assert lines[head[0]] == phase_1
    phase_2 = r"phase 2: fine-tuning \d+ backbone layers and the head, SGD lr 1e-4 momentum 0\.9, "
    assert re.fullmatch(phase_2 + "2 epochs", lines[tune[0]]), lines[tune[0]]


def test_train_flags_are_grouped(capsys):
    from keras_ft.cli.parser import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    groups = {
        group.title: {flag for action in group._group_actions for flag in action.option_strings}
        for group in train._action_groups
    }
    expected = {
        "data": ("--test-dir", "--image-size", "--batch-size", "--validation-split", "--seed"),
        "augmentation": ("--no-augment", "--flip", "--rotation", "--no-head-augment"),
        "model": ("--backbone", "--weights", "--pooling", "--dense-units", "--dropout"),
        "training": ("--head-epochs", "--finetune-lr", "--unfreeze", "--momentum"),
        "recipe": ("--recipe", "--fallback-to-head", "--fallback-to-probe"),
        "devices": ("--strategy", "--lr-scaling"),
        "output and run": ("--output", "--overwrite", "--resume", "--quiet", "--verbose"),
    }
    for title, flags in expected.items():
        assert set(flags) <= groups[title], (title, groups.get(title))
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: keras-ft train DATA_DIR --output RUN_DIR [options]")
    assert text.index("\nmodel:") < text.index("\ntraining:") < text.index("\noutput and run:")


def test_version(capsys):
    import importlib.metadata

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"keras-ft {importlib.metadata.version('keras-ft')}\n"


@pytest.mark.parametrize(
    "given, suggested",
    [
        (["--epochs", "5"], ["--head-epochs", "--finetune-epochs"]),
        (["--lr", "1e-3"], ["--head-lr", "--finetune-lr"]),
        (["--learning-rate=1e-3"], ["--head-lr", "--finetune-lr"]),
        (["--bakcbone", "vgg16"], ["--backbone"]),
    ],
)
def test_an_unknown_flag_is_refused_under_its_command_with_the_flags_meant(
    given, suggested, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "data", "--output", "run", *given])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: keras-ft train "), err  # the command's usage, not keras-ft's
    assert f"unrecognized arguments: {' '.join(given)}" in err
    assert "Did you mean " + " or ".join(suggested) + "?" in err, err


def test_a_mistyped_command_or_choice_gets_a_suggestion(capsys):
    for argv, suggestion in (
        (["trian", "data"], "Did you mean 'train'?"),
        (["train", "data", "--output", "run", "--recipe", "atuo"], "Did you mean 'auto'?"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert suggestion in capsys.readouterr().err


FAST_REFUSALS = {
    "a data folder that does not exist": (["{tmp}/nowhere"], "does not exist"),
    "an unknown backbone": (["{tmp}/data", "--backbone", "vgg61"], "Did you mean 'vgg16'?"),
    "an image size below the minimum": (["{tmp}/data", "--image-size", "7"], "minimum of 32 px"),
}


@pytest.mark.parametrize("case", sorted(FAST_REFUSALS))
def test_mistakes_that_need_no_tensorflow_are_refused_at_once(case, tmp_path):
    """In a fresh process, before TensorFlow loads: 0.3-0.5 s on a quiet machine (it was
    7-12 s). The bound, 2 s, leaves room for a loaded CI machine. No backbone plugin on the
    path (a plugin's imports are its own)."""
    write_folder(tmp_path / "data", per_class=2)
    args = [a.format(tmp=tmp_path) for a in FAST_REFUSALS[case][0]]
    path = [p for p in os.environ["PYTHONPATH"].split(os.pathsep) if p != PLUGINS]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    check = (
        "import sys\nfrom keras_ft.cli.main import main\ncode = main(sys.argv[1:])\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\nsys.exit(code)"
    )
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", check, "train", *args, "--output", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    assert FAST_REFUSALS[case][1] in result.stderr, result.stderr
    assert result.stdout.splitlines()[-1] == "False False"  # TensorFlow, Keras: not imported
    assert seconds < 2.0, seconds
    assert not (tmp_path / "run").exists()


def test_export_takes_its_output_as_output_like_every_command(capsys, tmp_path):
    from keras_ft.cli.parser import build_parser

    parser = build_parser()
    named = parser.parse_args(["export", "run", "--output", "out"])
    assert (named.run_dir, named.output, named.output_positional) == ("run", "out", None)
    for argv in (["export", "run"], ["export", "run", "out", "--output", "other"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "usage: keras-ft export" in capsys.readouterr().err
    # The positional still works (deprecated): it says so, then exports as before.
    code = main(["export", str(tmp_path / "no-run"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "deprecated" in err and "--output" in err
    assert code == 2 and "no-run" in err  # the export itself ran (and refused a missing run)


def test_help_says_what_recipe_auto_sets(capsys):
    """--help shows what auto decides for a flag left out, not a default it replaces."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--head-epochs HEAD_EPOCHS phase 1 epochs" in text
    assert "(default: set from the data by --recipe auto, 10 with --recipe none)" in text
    assert "(--recipe auto turns it on unless it cannot work" in text  # --fallback-to-probe
    assert "--momentum MOMENTUM phase 2 SGD momentum (default: 0.9)" in text  # auto leaves it


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "explain", "reproduce"])
def test_a_run_directory_that_is_not_there_is_refused_before_tensorflow(command, tmp_path):
    """A mistyped run directory needs no TensorFlow to be refused (measured in a fresh process:
    under 2 s, generous for a loaded CI machine; TensorFlow alone takes 5 s or more to load)."""
    import time

    args = {
        "evaluate": [DIGITS / "test"],
        "predict": ["a.png"],
        "export": ["--output", tmp_path / "out"],
        "explain": ["a.png", "--output", tmp_path / "out"],
        "reproduce": [],
    }[command]
    started = time.perf_counter()
    result = run_cli(command, tmp_path / "nowhere", *args)
    assert time.perf_counter() - started < 2.0
    assert result.returncode == 2 and "is not a keras_ft run directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_rank_refuses_a_missing_data_folder_before_tensorflow(tmp_path):
    import time

    started = time.perf_counter()
    result = run_cli("rank", tmp_path / "nowhere", "--backbones", "vgg16")
    assert time.perf_counter() - started < 2.0
    assert result.returncode == 2 and "does not exist or is not a directory" in result.stderr
