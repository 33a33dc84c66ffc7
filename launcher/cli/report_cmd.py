"""`launcher report RUN_DIR`: (re)write a run folder's report.html."""

from __future__ import annotations

import importlib.util

import click


@click.command(epilog="""\b
Examples:
  launcher pull wan22-t2v-lightning-high-20261124-101500 ./runs
  launcher report ./runs/wan22-t2v-lightning-high-20261124-101500""")
@click.argument("run_dir", type=click.Path())
def report(run_dir):
    """Write RUN_DIR/report.html: settings, loss curves, contact sheets, samples, checkpoints, step timings."""
    from launcher import report as reports
    from launcher.core.errors import UserError

    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("the report's loss plot needs matplotlib: pip install 'lora-gym[report]'")
    click.echo(str(reports.write(run_dir)))
    return 0
