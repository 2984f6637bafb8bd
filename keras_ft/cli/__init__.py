"""The `keras-ft` command: parsing (`main`) and one function per subcommand."""
