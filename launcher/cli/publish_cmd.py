"""`launcher publish RUN --repo user/name`: put a finished run on the Hugging Face Hub."""

from __future__ import annotations

import click


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _dry_run(bundle, url: str) -> None:
    click.echo(f"dry run: would publish to {url} (no token read, nothing sent)")
    for entry in bundle.entries:
        click.echo(f"  {entry.repo_path:<60} {_size(entry.size):>10}")
    click.echo(f"  {len(bundle.entries)} files, {_size(sum(e.size for e in bundle.entries))}; only those that "
               "differ from the repo's are uploaded")
    click.echo("card front matter:")
    for line in bundle.front_matter.rstrip("\n").splitlines():
        click.echo(f"  {line}")


@click.command(epilog="""\b
Examples:
  launcher publish ./runs/wan22-t2v-lightning-both-20261124-101500 --repo me/zorbix-wan22 --trigger zorbix
  launcher publish wan21-t2v-1.3b-20261124-101500 --repo me/zorbix-wan21 --private
  launcher publish ./runs/wan21-t2v-1.3b-20261124-101500/run.json --repo me/zorbix-wan21 --dry-run""")
@click.argument("run")
@click.option("--repo", "repo_id", required=True, metavar="USER/NAME", help="The Hub model repo (made if missing).")
@click.option("--private", is_flag=True, help="Make the repo private (refused if it already exists public).")
@click.option("--trigger", metavar="WORD", help="The trigger word the captions used, for the card (instance_prompt).")
@click.option("--checkpoints", is_flag=True, help="Also upload every saved epoch's LoRA (under checkpoints/).")
@click.option("--dry-run", is_flag=True, help="List the files, sizes and card metadata; no token, no network.")
def publish(run, repo_id, private, trigger, checkpoints, dry_run):
    """Publish RUN (a run folder, its run.json, or a pulled run's id) to the Hugging Face Hub: the LoRA(s) as
    musubi-tuner wrote them, a model card, sample videos, the loss curve and ComfyUI workflows. The token is
    HF_TOKEN or the one `hf auth login` saved. Publishing again uploads only what changed."""
    from huggingface_hub import constants

    from launcher.core.errors import UserError
    from launcher.publish import bundle, hub, source

    hub.check_repo_id(repo_id)
    if trigger is not None and not trigger.strip():
        raise UserError("--trigger is empty: give the word your captions use for the subject, or leave it out")
    endpoint = constants.ENDPOINT.rstrip("/")
    found = source.load(run)
    built = bundle.build(found, repo_id, endpoint, trigger and trigger.strip(), checkpoints)
    if dry_run:
        _dry_run(built, f"{endpoint}/{repo_id}")
        return 0
    done = hub.upload(built.entries, repo_id, private, f"LoRA Gym: publish run {found.run_id}")
    if not done.changed:
        click.echo(f"nothing changed: {done.url} already holds every file of this run (commit {done.commit[:12]})")
        return 0
    size = _size(sum(e.size for e in done.changed))
    click.echo(f"published {len(done.changed)} of {len(built.entries)} files ({size}) to {done.url} "
               f"(commit {done.commit[:12]})")
    return 0
