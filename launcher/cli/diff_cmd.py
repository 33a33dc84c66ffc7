"""`launcher diff RUN_A RUN_B`: what differs between two runs (launcher/rundiff.py)."""

from __future__ import annotations

import json

import click


@click.command(epilog="""\b
Examples:
  launcher diff ./runs/wan21-t2v-1.3b-20261124-101500 ./runs/wan21-t2v-1.3b-20261125-090000
  launcher diff wan22-t2v-lightning-high-20261124-101500 ./runs/my-run/run.json --format json""")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one document with every difference.")
def diff(run_a, run_b, fmt):
    """Show what differs between two runs (each a run id, run folder or run.json): the image, the preset's values
    (dotted keys), the overrides, the dataset's files, the weights and the final losses."""
    from launcher import rundiff

    result = rundiff.compare(rundiff.load(run_a), rundiff.load(run_b))
    click.echo(json.dumps(result, indent=2) if fmt == "json" else rundiff.as_text(result))
    return 0
