"""The CLI subcommands, one module per capability group."""
