"""keras_ft benchmarks: each comparison measured side by side, in one run, on generated data.

`python -m bench.run` runs them all (see its docstring); each module also runs alone.
"""
