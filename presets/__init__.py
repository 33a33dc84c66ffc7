"""The preset registry: every *.toml file in this directory is a preset, named by its stem."""
