"""`launcher report RUN_DIR`: (re)write a run folder's report.html."""

from __future__ import annotations

import importlib.util

import click


def after_pull(run_id: str, dest: str) -> list:
    """Write report.html in each run folder a pull brought (Modal's both-experts run has one per expert)."""
    from pathlib import Path

    from launcher import report as reports

    folders = sorted({p.parent for pattern in (f"{run_id}*/run.json", f"{run_id}*/*/run.json")
                      for p in Path(dest).glob(pattern)})
    if importlib.util.find_spec("matplotlib") is None:
        if folders:
            click.echo(f"no report.html: pip install 'lora-gym[report]', then `launcher report {folders[0]}`", err=True)
        return []
    return [reports.write(folder) for folder in folders]


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
