"""The tools: each calls the function its CLI command calls (launcher/cli/*.py), never a second implementation.

No `from __future__ import annotations` here: the SDK builds each tool's JSON schema from these annotations.
"""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from launcher.caption import LORA_TYPES, PROVIDERS  # the CLI's choices (its module imports no SDK)
from launcher.mcp_server.calls import InputError
from launcher.mcp_server.requests import RunRequest

Overrides = Annotated[tuple[str, ...], Field(description="Preset overrides KEY=VALUE (the CLI's --set).")]
RunId = Annotated[str, Field(description="A run id, as start or status (without run_id) returns it.")]


def _call(command, **given):
    """Run a CLI command's own function; click fills in the command's defaults for what the tool does not take."""
    import click

    with click.Context(command) as ctx:
        return ctx.invoke(command, **given)


def list_presets() -> dict:
    """Every shipped preset: name, task, experts, GPU memory class and description."""
    from launcher.cli.presets_cmd import preset_rows

    return {"presets": preset_rows()}


def show_preset(preset: Annotated[str, Field(description="A preset name or a .toml path.")],
                overrides: Overrides = ()) -> dict:
    """The fully resolved values of a preset (defaults filled in, overrides applied), as TOML text."""
    from launcher.cli.presets_cmd import show

    _call(show, preset=preset, overrides=tuple(overrides))
    return {}


def _job_and_options(run: RunRequest):
    from launcher.backends import LaunchOptions, backend_names
    from launcher.cli.backend_options import APPLIES, refuse_given
    from launcher.cli.run_cmd import build_job
    from launcher.cli.run_cmd import run as run_command

    # A field meant for another backend would do nothing: refused as `launcher run` refuses its flag.
    refuse_given(run.backend, sorted(n for n in run.model_fields_set if n in APPLIES),
                 {p.name: p.opts[0] for p in run_command.params}, backend_names())
    job = build_job(run.preset, run.expert, run.dataset, tuple(run.overrides), run.gpu_memory, run.gpus_per_run,
                    run.samples_file)
    options = LaunchOptions(dataset=run.dataset, output=run.output, image=run.image, gpus=run.gpus,
                            cache_volume=run.cache_volume, gpu_type=run.gpu_type, follow=False,
                            max_hours=run.max_hours, max_cost=run.max_cost, volume=run.volume, spot=run.spot)
    return job, options


def plan(run: RunRequest) -> dict:
    """The plan of a run, without running anything: what `launcher run --dry-run --format json` prints (with a
    backend: the plan and what the backend would send)."""
    from launcher.cli import render
    from launcher.cli.run_cmd import plan_document

    job, options = _job_and_options(run)
    return plan_document(job, run.backend, options) if run.backend else render.plan_data(job)


def check_dataset(directory: Annotated[str, Field(description="The dataset folder.")],
                  preset: Annotated[str, Field(description="A preset name or a .toml path.")],
                  expert: Literal["high", "low", "both"] | None = None,
                  overrides: Overrides = (),
                  gpu_memory: Annotated[int | None, Field(ge=8, le=1024)] = None,
                  gpus_per_run: Annotated[int | None, Field(ge=1, le=8)] = None,
                  details: bool = False) -> dict:
    """`launcher dataset check`: every file opens, captions, frames, fps, buckets, steps, training time and whether
    the largest bucket fits; an error result lists what to fix (the table is in `output`)."""
    from launcher.cli.dataset_cmd import check

    _call(check, directory=directory, preset=preset, expert=expert, overrides=tuple(overrides), gpu_memory=gpu_memory,
          gpus_per_run=gpus_per_run, details=details)
    return {"ok": True}


def caption(directory: Annotated[str, Field(description="The dataset folder.")],
            anchor: Annotated[str, Field(description="The word(s) the LoRA will be called by.")],
            lora_type: Literal[LORA_TYPES] = "character",
            provider: Literal[tuple(sorted(PROVIDERS))] = "gemini",
            model: str | None = None,
            overwrite: bool = False,
            run: Annotated[bool, Field(description="Send the files to the captioning service (it may bill the "
                                                   "user's key); false: only list what would be captioned.")]
            = False) -> dict:
    """`launcher caption`: a dry run (what would be captioned, the prompts) unless run is true."""
    from launcher.cli.caption_cmd import caption as command

    code = _call(command, directory=Path(directory), anchor=anchor, lora_type=lora_type, provider=provider,
                 model=model, overwrite=overwrite, dry_run=not run)
    return {"exit_code": code, "dry_run": not run}


def _estimate(run: RunRequest):
    """The job, options, backend and the CLI's own estimate (media check, quote, --max-cost)."""
    from launcher.backends import load_backend
    from launcher.cli.run_cmd import _note_hour_limit, check_media, quote_run

    if run.backend is None:
        raise InputError("an estimate needs a backend: set backend to runpod, modal, skypilot or local",
                         input_name="run.backend")
    job, options = _job_and_options(run)
    chosen = load_backend(run.backend)
    _note_hour_limit(job, run.max_hours)
    warnings, seconds = check_media(job, run.expert, run.dataset)
    est = quote_run(chosen, job, options, seconds) if hasattr(chosen, "quote") else None
    return job, options, chosen, est, warnings


def estimate(run: RunRequest) -> dict:
    """What the run will cost (after the dataset check): show it to the user; start needs its estimate_id. A
    local run costs nothing and needs none."""
    from launcher.mcp_server.spend import estimate_data

    job, _, _, est, warnings = _estimate(run)
    if est is None:
        return {"paid": False, "warnings": warnings}
    return {"paid": True, **estimate_data(est, run.key(), job.loaded.content_hash), "warnings": warnings}


def start(run: RunRequest,
          estimate_id: Annotated[str | None, Field(description="The estimate_id the estimate tool returned and the "
                                                               "user saw.")] = None,
          estimate_usd: Annotated[float | None, Field(gt=0, description="Or: the amount in USD the user "
                                                                        "accepted.")] = None) -> dict:
    """Start the run. A paid backend refuses without the estimate the user was shown (its id or amount);
    max_cost applies as on the command line. A local run runs to its end within this call."""
    from launcher import rerun, runs
    from launcher.mcp_server.spend import require_shown

    job, options, chosen, est, warnings = _estimate(run)
    if est is not None:
        require_shown(est, run.key(), job.loaded.content_hash, estimate_id, estimate_usd)
    if chosen.capabilities.name != "local":  # as `launcher run`: a cloud pulls the image by its digest
        from launcher.backends import registry_digest

        options = registry_digest.pinned(options, job.loaded.preset.family)
    try:
        code = chosen.launch(job, options)
    finally:  # as `launcher run` does: what `launcher run --from` and `launcher diff` read back
        rerun.remember(job, options)
    # Local runs are recorded too (for `status`), but they ran to their end within this call.
    recorded = any(r["run_id"] == job.plan.run_id for r in runs.all_runs())
    detached = recorded and chosen.capabilities.detach
    return {"run_id": job.plan.run_id, "exit_code": code, "detached": detached, "warnings": warnings}


def status(run_id: Annotated[str | None, Field(description="A run id; without it, every recorded run.")] = None
           ) -> dict:
    """`launcher status`: state, $/h and cost so far of a run (a sweep: one row per run), or the list of runs."""
    from launcher.cli.runs_cmd import status as command

    return {"exit_code": _call(command, run_id=run_id)}


def logs(run_id: RunId) -> dict:
    """`launcher logs`: the run's logs so far (in `output`)."""
    from launcher.cli.runs_cmd import logs as command

    return {"exit_code": _call(command, run_id=run_id, follow=False)}


def stop(run_id: RunId) -> dict:
    """`launcher stop`: stop the run now, so nothing is left billing."""
    from launcher.cli.runs_cmd import stop as command

    return {"exit_code": _call(command, run_id=run_id)}


def pull(run_id: RunId, dest: Annotated[str, Field(description="Folder to download into.")] = ".") -> dict:
    """`launcher pull`: download the run's LoRAs, run.json and samples into dest, and write its report.html."""
    from launcher.cli.runs_cmd import pull as command

    return {"exit_code": _call(command, run_id=run_id, dest=dest)}


def report_path(run_id: RunId, dest: Annotated[str, Field(description="The folder the run was pulled into.")] = "."
                ) -> dict:
    """The report.html of each run folder pulled into dest (written now if missing): give the user this path."""
    from launcher.cli.report_cmd import after_pull

    paths = [str(p) for p in after_pull(run_id, dest)]
    if not paths:
        raise InputError(f"no run folder of {run_id} in {dest}: pull it first (tool pull)", input_name="dest")
    return {"reports": paths}


TOOLS = (list_presets, show_preset, plan, check_dataset, caption, estimate, start, status, logs, stop, pull,
         report_path)
