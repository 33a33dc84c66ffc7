"""`launcher caption DIR`: write a caption beside every image and video, with Gemini or Replicate."""

from __future__ import annotations

from pathlib import Path

import click

from launcher.caption import LORA_TYPES, PROVIDERS
from launcher.cli.project import project_defaults


@click.command(epilog="""\b
Examples:
  launcher caption ./my-dataset --anchor annika --dry-run
  GEMINI_API_KEY=... launcher caption ./my-dataset --anchor annika --concurrency 8 --rpm 120
  REPLICATE_API_TOKEN=... launcher caption ./my-dataset --anchor "ink wash style" --type style --provider replicate
\b
Environment: GEMINI_API_KEY or REPLICATE_API_TOKEN (the key); GEMINI_BASE_URL or REPLICATE_BASE_URL
(optional: another endpoint, such as a proxy).""")
@click.argument("directory", type=click.Path(path_type=Path), required=False)
@click.option("--anchor", required=True,
              help="The word(s) the LoRA will be called by; every caption must contain it.")
@click.option("--type", "lora_type", type=click.Choice(LORA_TYPES), default="character", show_default=True,
              help="What the LoRA teaches; picks the captioning rules.")
@click.option("--provider", type=click.Choice(sorted(PROVIDERS)), default="gemini", show_default=True,
              help="Captioning service.")
@click.option("--model", help="Model to ask. Default: gemini-3.8-flash (gemini), google/gemini-2.5-flash "
                              "(replicate; owner/name or owner/name:version).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Files captioned at the same time.")
@click.option("--rpm", type=click.IntRange(1, 100_000), default=100_000, show_default=True,
              help="Most model requests per minute, retries included: a ceiling. Below it the pace adapts, "
                   "from 10 a minute up to what the key allows (the server's 429s tell).")
@click.option("--prompt-file", type=click.Path(path_type=Path),
              help="Your own instructions instead of the built-in ones; {anchor} and {media} are filled in.")
@click.option("--overwrite", is_flag=True, help="Caption files that already have a non-empty caption too.")
@click.option("--dry-run", is_flag=True, help="List what would be captioned, and the prompts; send nothing.")
@project_defaults()
def caption(directory, anchor, lora_type, provider, model, concurrency, rpm, prompt_file, overwrite, dry_run):
    """Write <stem>.txt beside every image and video in DIRECTORY (and its images/ and videos/); DIRECTORY
    defaults to the project file's dataset, else ./dataset."""
    from launcher.caption import check_model, core, open_provider, prompts
    from launcher.core.errors import UserError

    anchor = " ".join(anchor.split())
    if not any(ch.isalnum() for ch in anchor):
        raise UserError("--anchor has no letters or digits: give the word the LoRA will be called by")
    check_model(provider, model)
    items = core.discover(directory)
    prompt_by_kind = prompts.prompts_for(anchor, lora_type, prompt_file)
    states = {item: item.caption_state() for item in items}
    unreadable = [str(Path(item.shown).with_suffix(".txt")) for item, state in states.items() if state == "unreadable"]
    if unreadable and not overwrite:
        raise UserError(f"{len(unreadable)} caption{'s are' if len(unreadable) > 1 else ' is'} not UTF-8 text "
                        f"({', '.join(unreadable[:3])}{', ...' if len(unreadable) > 3 else ''}): re-save as UTF-8, "
                        "or add --overwrite to caption them anew")
    todo = [item for item in items if overwrite or states[item] != "ok"]
    summary = core.Summary(skipped=[item.shown for item in items if item not in todo])
    if dry_run:
        _print_plan(todo, summary.skipped, prompt_by_kind, provider, model)
        return 0
    if not todo:
        click.echo(f"nothing to caption: all {len(items)} files have a caption (add --overwrite to redo them)")
        return 0
    summary.pace = core.AdaptiveRate(ceiling=rpm)
    caller = core.Caller(core.RetryPolicy(), summary.pace)
    engine, key = open_provider(provider, model, caller)
    job = core.Job(engine, prompt_by_kind, anchor, caller, concurrency=concurrency, hidden=(key,))
    click.echo(f"captioning {len(todo)} files with {provider} ({model or PROVIDERS[provider].default_model}), "
               f"{len(summary.skipped)} already captioned", err=True)
    try:
        job.run(todo, summary)
    except KeyboardInterrupt:
        for line in summary.lines():
            click.echo(line, err=True)
        raise
    for line in summary.lines():
        click.echo(line)
    return 1 if summary.failed else 0


def _print_plan(todo, skipped, prompt_by_kind, provider, model):
    if not todo:
        click.echo(f"nothing to caption: all {len(skipped)} files have a caption (add --overwrite to redo them)")
        return
    click.echo(f"would caption {len(todo)} files with {provider} ({model or PROVIDERS[provider].default_model}):")
    for item in todo:
        click.echo(f"  {item.shown}  ({item.kind})")
    if skipped:
        click.echo(f"would skip {len(skipped)} that already have a caption (--overwrite to redo them)")
    for kind in sorted({item.kind for item in todo}):
        click.echo(f"\n--- prompt sent with each {kind} ---\n{prompt_by_kind[kind]}")
