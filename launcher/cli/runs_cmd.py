"""`launcher status|logs|stop|pull`: detached runs (Modal, RunPod) found again through the run registry."""

from __future__ import annotations

import click


def _backend_for(run_id: str):
    from launcher import runs
    from launcher.backends import load_backend, require_sdk
    from launcher.core.errors import UserError

    record = runs.load(run_id)
    if record.get("kind") == "sweep" and record["backend"] == "local":
        raise UserError(f"{run_id} is a local sweep: its logs went to the terminal that ran it and it stops with "
                        f"Ctrl-C there; `launcher status {run_id}` shows its runs")
    require_sdk(record["backend"], f"{run_id} (a {record['backend']} run)")
    return record, load_backend(record["backend"])


def _sweep_module(record: dict):
    """A sweep's backend module (launcher/sweep/<backend>_sweep.py), or None for a single run."""
    import importlib

    from launcher.backends import require_sdk

    if record.get("kind") != "sweep":
        return None
    if record["backend"] != "local":  # a local sweep's runs are folders on this machine
        require_sdk(record["backend"], f"{record['run_id']} (a {record['backend']} sweep)")
    return importlib.import_module(f"launcher.sweep.{record['backend']}_sweep")


def _local_state(record: dict) -> str:
    """A local run's state from its run folder, for the list (a cloud run's would cost a platform call)."""
    if record["backend"] != "local" or record.get("kind") == "sweep":
        return ""
    from launcher.backends import local_runs

    return f"  {local_runs.state(record)}"


@click.command(epilog="""\b
Examples:
  launcher status
  launcher status wan22-t2v-lightning-high-20261124-101500
  launcher status wan21-t2v-1.3b-sweep-20261129-011902""")
@click.argument("run_id", required=False)
def status(run_id):
    """Show a run's state, $/h and cost so far (a sweep: one row per run); without RUN_ID, list the runs."""
    from launcher import runs

    if run_id is None:
        rows = runs.all_runs()
        for record in rows:
            click.echo(f"{record['run_id']}  {record['backend']}  {record.get('preset', '')}  "
                       f"{record.get('created_at', '')}" + _local_state(record))
        if not rows:
            click.echo(f"no runs recorded in {runs.home() / 'runs'}")
        return 0
    from launcher import runs
    from launcher.sweep.registry import table

    record = runs.load(run_id)
    if (module := _sweep_module(record)) is not None:  # one row per run of the sweep
        click.echo(table(module.status_rows(record)))
        return 0
    record, backend = _backend_for(run_id)
    for key, value in backend.status(record).items():
        click.echo(f"{key:<16} {value}")
    return 0


@click.command(epilog="\b\nExamples:\n  launcher logs RUN_ID --follow")
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the run ends.")
def logs(run_id, follow):
    """Print a run's logs."""
    record, backend = _backend_for(run_id)
    return backend.logs(record, follow)


@click.command(epilog="\b\nExamples:\n  launcher stop RUN_ID")
@click.argument("run_id")
def stop(run_id):
    """Stop a run now, so nothing is left billing."""
    record, backend = _backend_for(run_id)
    return backend.stop(record)


@click.command(epilog="\b\nExamples:\n  launcher pull RUN_ID ./runs")
@click.argument("run_id")
@click.argument("dest", required=False, default=".", type=click.Path(file_okay=False))
def pull(run_id, dest):
    """Download a run's outputs (LoRAs, run.json, samples) into DEST (default: the current folder) and write each
    run folder's report.html; for a sweep, every run's."""
    from launcher import runs
    from launcher.cli.report_cmd import after_pull

    if (module := _sweep_module(runs.load(run_id))) is not None:
        record = runs.load(run_id)
        code = module.pull(record, dest)
    else:
        record, backend = _backend_for(run_id)
        code = backend.pull(record, dest)
    # A sweep's runs are named <sweep id>-NN: every run folder the pull brought gets its report.
    for written in after_pull(record["run_id"], dest) if code == 0 else []:
        click.echo(f"report: {written}", err=True)
    return code
