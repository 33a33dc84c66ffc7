"""`launcher report RUN_DIR`: (re)write a run folder's report.html."""

from __future__ import annotations

import importlib.util

import click

from launcher.core import extras
from launcher.core.errors import UserError


class LoraCheckFailed(UserError):
    """The report is written, but a LoRA would load partially: one `error:` line per training, exit code 1."""

    exit_code = 1


def after_pull(run_id: str, dest: str) -> list:
    """Write report.html in each run folder a pull brought (Modal's both-experts run has one per expert)."""
    from pathlib import Path

    from launcher import report as reports

    folders = sorted({p.parent for pattern in (f"{run_id}*/run.json", f"{run_id}*/*/run.json")
                      for p in Path(dest).glob(pattern)})
    if importlib.util.find_spec("matplotlib") is None:
        if folders:
            click.echo(f"no report.html: {extras.install_command('report')}, then `launcher report {folders[0]}`",
                       err=True)
        return []
    return [reports.write(folder) for folder in folders]


@click.command(epilog="""\b
Examples:
  launcher pull wan22-t2v-lightning-high-20261124-101500 ./runs
  launcher report ./runs/wan22-t2v-lightning-high-20261124-101500
  launcher report ./runs/wan21-t2v-14b-20261124-101500 --dit ~/models/wan2.1_t2v_14B_bf16.safetensors""")
@click.argument("run_dir", type=click.Path())
@click.option("--dit", "dits", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A DiT file to check the LoRAs' keys against, when it is not where the run read it (matched by "
                   "file name; repeat for Wan 2.2's two experts). Without it, names and shapes are not re-checked.")
def report(run_dir, dits):
    """Write RUN_DIR/report.html: settings, loss curves, contact sheets, samples, checkpoints, step timings, and
    each training's LoRA key check, run again here. Exits 1 when a LoRA would not load whole."""
    from launcher import loracheck
    from launcher import report as reports

    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(f"the report's loss plot needs matplotlib: {extras.install_command('report')}")
    checks = loracheck.recheck(run_dir, dits)
    click.echo(str(reports.write(run_dir, checks)))
    for step, outcome in sorted(checks.items()):
        where = f"DiT {outcome.dit_read}" if outcome.dit_checked else "no DiT here: names and shapes not re-checked"
        click.echo(f"LoRA check {step}: {outcome.status} ({len(outcome.files)} file(s); {where})")
    failed = [f"LoRA check {step} failed: {o.reason}" for step, o in sorted(checks.items()) if o.status == "failed"]
    if failed:
        raise LoraCheckFailed(*failed)
    return 0

