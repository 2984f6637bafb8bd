"""`python -m keras_ft.cli`: the `keras-ft` command."""

from keras_ft.cli.main import run

run()
