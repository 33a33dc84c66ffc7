"""The `launcher` command line. Subcommands load lazily so `launcher --help` imports nothing heavy."""
