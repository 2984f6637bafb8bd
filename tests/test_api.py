"""The public API in `keras_ft/__init__.py`: every exported name resolves, lazily."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import keras_ft


def test_every_exported_name_resolves_to_what_its_module_defines():
    for name in keras_ft.__all__:
        value = getattr(keras_ft, name)
        module = sys.modules[keras_ft._EXPORTS[name]]
        assert value is getattr(module, name), name


def test_dir_lists_every_export_and_all_is_sorted():
    assert set(keras_ft.__all__) <= set(dir(keras_ft))
    assert keras_ft.__all__ == sorted(keras_ft._EXPORTS)


def test_what_users_receive_is_exported():
    for name in (
        "WorkerLostError",
        "SearchResult",
        "ScanReport",
        "TrainingHistory",
        "DataConfig",
        "ModelConfig",
        "TrainingConfig",
        "export_for_serving",
        "reproduce_run",
        "get_distribution",
        "register_backbone",
    ):
        assert name in keras_ft.__all__, name


def test_an_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="module 'keras_ft' has no attribute 'FineTunner'"):
        keras_ft.FineTunner  # noqa: B018


def test_import_keras_ft_imports_no_tensorflow():
    check = "import sys, keras_ft\nprint('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "False False", result.stdout + result.stderr


def test_the_readme_table_lists_exactly_the_exports():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("The public API is what", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(\w+)`", table))
    assert listed == set(keras_ft.__all__)
