"""Run every benchmark and write the results.

    python -m bench.run            # full: the figures in BENCHMARKS.md (~15-20 min on 2 cores)
    python -m bench.run --quick    # smaller sizes, one round: a few minutes
    python -m bench.run --tiny     # smoke test: every script in one process; figures mean nothing

Options: `--only pipeline cpu` runs some of them; `--data DIR` keeps the generated
images for the next run; `--output DIR` (default build/bench) receives results.md
(the tables, with the machine, load, command and date) and results.json (every
measurement).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from bench import common

MODULES = ("pipeline", "feature_cache", "overhead", "memory", "cpu", "gpu")


def measure_all(modules, work: common.Workspace, repeats: int | None) -> dict[str, list[dict]]:
    """{module name: results}; tiny mode measures every configuration in one process."""
    if work.mode != "tiny":
        results = {}
        for module in modules:
            rounds = repeats or module.SETTINGS[work.mode].get("repeats", 1)
            results[module.__name__] = common.run_configs(module.configs(work), rounds)
        return results
    configs = [config for module in modules for config in module.configs(work)]
    measured = common.run_configs(configs, inline=True)
    return {
        module.__name__: [r for r in measured if f"bench.{r['module']}" == module.__name__]
        for module in modules
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=MODULES, default=list(MODULES))
    parser.add_argument("--output", default=str(common.ROOT / "build" / "bench"))
    args = common.parse_args(__doc__, argv, parser)
    modules = [importlib.import_module(f"bench.{name}") for name in args.only]
    before, started = common.machine(), time.perf_counter()
    with common.workspace(args) as work:
        results = measure_all(modules, work, args.repeats)
        sections = [module.report(results[module.__name__], work) for module in modules]
    after = common.machine()
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        f"## Results ({args.mode} mode)",
        "",
        f"- machine: {before['cpu']}, {before['cores']} cores, no GPU used unless the GPU "
        f"section says so; Python {before['python']}, TensorFlow {before['tensorflow']}, "
        f"Keras {before['keras']}",
        f"- date: {before['date']}; wall time {(time.perf_counter() - started) / 60:.1f} min",
        f"- load average (1, 5, 15 min) before: {before['load']}, after: {after['load']}",
        f"- command: `{command.strip()}`",
    ]
    if args.mode == "tiny":
        header.append("- tiny mode: one process for everything, tiny sizes: figures mean nothing")
    text = "\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n"
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.md").write_text(text)
    record = {"mode": args.mode, "machine": before, "load_after": after["load"],
              "command": command.strip(), "results": results}  # fmt: skip
    (output / "results.json").write_text(json.dumps(record, indent=1))
    print(f"[bench] wrote {output / 'results.md'} and results.json")


if __name__ == "__main__":
    main()
