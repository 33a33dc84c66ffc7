"""Options shared by several commands, defined once."""

from __future__ import annotations

import click

set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a preset value by its dotted key (repeatable), e.g. --set train.max_train_epochs=30.")
