"""The `keras-ft` command: `main` (parse, run), `parser` and `flags` (the arguments),
`train`, `runs` and `explore` (one function per subcommand), `reference` (the docs)."""
