"""`launcher sweep`: one run per combination of a grid of overrides, sharing one cache pass."""

from __future__ import annotations

import click

from launcher.cli.backend_options import gpu_ids_option, refuse_misplaced, renamed_gpus_option
from launcher.cli.options import (
    Finite,
    gpu_memory_option,
    gpus_per_run_option,
    set_option,
    with_gpu_memory,
    with_gpus_per_run,
)
from launcher.cli.project import project_defaults, say_notes

SWEEP_BACKENDS = ["local", "modal", "runpod"]  # each has a launcher/sweep/<name>_sweep.py
REFUSED_BACKENDS = ["skypilot"]  # accepted by --backend only to say why not: launcher/sweep/skypilot_sweep.py


@click.command(epilog="""\b
Examples:
  launcher sweep --preset wan21-t2v-1.3b --dataset ./my-dataset --grid train.learning_rate=5e-5,1e-4 --dry-run
  launcher sweep --preset wan22-t2v-lightning --expert low --dataset ./my-dataset \\
      --grid train.learning_rate=5e-5,8e-5,1e-4 --grid experts.low.network_dim=32,42 --backend modal
  launcher sweep --preset wan21-t2v-1.3b --dataset ./my-dataset --grid-file grid.toml --backend local \\
      --output ./runs --gpu-ids 0,1
  launcher status SWEEP_ID
  launcher pull SWEEP_ID ./runs""")
@click.option("--preset", required=True, help="A preset name (see `launcher presets list`) or a .toml path.")
@click.option("--expert", type=click.Choice(["high", "low", "both"]),
              help="Wan 2.2 only: which expert each run trains (high: composition, motion, layout; low: detail, "
                   "texture, identity); `both`: two runs per combination, one cache pass [default for Wan 2.2].")
@click.option("--dataset", "dataset_dir", type=click.Path(),
              help="The dataset folder, as for run [default: the project file's, else ./dataset when it exists].")
@click.option("--grid", "grid_options", multiple=True, metavar="KEY=V1,V2,...",
              help="A preset key and its values (repeatable); one run per combination of all of them.")
@click.option("--grid-file", type=click.Path(dir_okay=False),
              help="A TOML file: [grid] with KEY = [values] (dotted keys or nested tables).")
@click.option("--yes", is_flag=True, help="Allow a grid of more than 64 runs.")
@set_option
@gpu_memory_option
@gpus_per_run_option
@click.option("--backend", type=click.Choice([*SWEEP_BACKENDS, *REFUSED_BACKENDS]),
              help="Where the runs go (as for `launcher run`); skypilot is refused with what to do instead.")
@click.option("--output", type=click.Path(file_okay=False), help="local: folder for the run folders.")
@click.option("--image", help="The image tag or digest [default: lora-gym-<family>:<version>].")
@gpu_ids_option
@renamed_gpus_option
@click.option("--cache-volume", help="local/modal: the cache volume [default: lora-gym-cache-<family>].")
@click.option("--gpu", "gpu_type", help="modal/runpod: the platform's GPU type [default: from the preset].")
@click.option("--max-hours", type=Finite(0, 720, "hours"), help="modal/runpod: each run's time limit.")
@click.option("--max-cost", type=Finite(0, 100_000, "usd"),
              help="modal/runpod: USD for the whole sweep; refuse to start if the estimate is higher.")
@click.option("--volume", help="runpod: network volume id (default: the family's volume).")
@click.option("--dry-run", is_flag=True, help="Print the runs, the cache passes and what the backend would start.")
@click.option("--no-check", is_flag=True, help="Skip the media check (and so the cost estimate) before launching.")
@project_defaults(auto=True)
def sweep(preset, expert, dataset_dir, grid_options, grid_file, yes, overrides, gpu_memory, gpus_per_run, backend,
          output, image, gpus, cache_volume, gpu_type, max_hours, max_cost, volume, dry_run, no_check):
    """Train one LoRA per combination of the --grid values: the caches once, then every run."""
    from launcher.backends import LaunchOptions, require_sdk
    from launcher.sweep import grid
    from launcher.sweep.prepare import describe, prepare_sweep

    if backend in REFUSED_BACKENDS:  # before anything is read, planned or printed
        _module(backend).refuse()
    refuse_misplaced(backend, SWEEP_BACKENDS)
    if backend and not dry_run:
        require_sdk(backend)
    axes = grid.combine(grid_options, grid_file)
    grid.check_fixed(axes, _fixed_keys(overrides, gpu_memory, gpus_per_run))
    base = with_gpus_per_run(with_gpu_memory(overrides, gpu_memory), gpus_per_run)
    planned = prepare_sweep(preset, expert, base, dataset_dir, axes, yes)
    say_notes()
    if backend is None:
        click.echo("\n".join([*describe(planned), _footer(None, None, planned, None, "modal or runpod",
                                                           backend="local")]))
        return 0
    options = LaunchOptions(dataset=dataset_dir, output=output, image=image, gpus=gpus, cache_volume=cache_volume,
                            gpu_type=gpu_type, max_hours=max_hours, max_cost=max_cost, volume=volume)
    module = _module(backend)
    # The plan is printed only once every check passed: the backend's dry run makes them all; a launch makes the
    # module's check (image, GPU ids, volumes, credentials, GPU type) and the budget, so a refusal is the only output.
    backend_text = module.dry_run(planned, options) if dry_run else None
    footer = _footer(backend, module, planned, options) if dry_run else None
    if not dry_run:
        module.check(planned, options)
    estimate = _budget(module, planned, options, dataset_dir, no_check) if not dry_run and hasattr(
        module, "quotes") else []
    click.echo("\n".join(describe(planned)))
    if dry_run:  # as `run`: the estimate and the next command to stderr, stdout stays the backend's request
        click.echo(backend_text)
        click.echo(footer, err=True)
        return 0
    for line in estimate:
        click.echo(line, err=True)
    if backend != "local":  # as `launcher run`: every run pulls the image by the digest its tag names now
        from launcher.backends import registry_digest

        options = registry_digest.pinned(options, planned.trainings[0].job.loaded.preset.family)
    return module.launch(planned, options)


def _fixed_keys(overrides, gpu_memory, gpus_per_run) -> list[tuple[str, str]]:
    """(key, option) for what the command line sets for every run, which a grid key must not also set."""
    fixed = [(o.partition("=")[0].strip(), f"--set {o.partition('=')[0].strip()}") for o in overrides]
    fixed += [("resources.gpu_memory_gb", "--gpu-memory")] if gpu_memory else []
    return fixed + ([("resources.gpus", "--gpus-per-run")] if gpus_per_run else [])


def _footer(chosen, module, planned, options, others: str = "", **add) -> str:
    """A sweep dry run's last lines: its estimate and the command that starts it."""
    from launcher import estimate
    from launcher.cli import render

    return estimate.sweep_line(chosen, module, planned, options) + \
        render.next_step(click.get_current_context(), others, **add)


def _module(backend: str):
    import importlib

    return importlib.import_module(f"launcher.sweep.{backend}_sweep")


def _budget(module, planned, options, dataset_dir: str, no_check: bool) -> list[str]:
    """The whole sweep's estimate as lines for stderr, printed after the plan; over --max-cost is refused here,
    before anything is printed."""
    from launcher.core.errors import UserError
    from launcher.sweep import budget

    if no_check:
        if options.max_cost is not None:
            raise UserError("--max-cost needs the time estimate of the media check: drop --no-check")
        return ["estimate: none (the media check was skipped with --no-check)"]
    warnings, seconds = budget.seconds_per_run(planned, dataset_dir)
    quotes, cache_quote = module.quotes(planned, options)
    est = budget.estimate(planned, quotes, seconds, cache_quote)
    budget.check_budget(est, options.max_cost)
    return [*(f"warning: {warning}" for warning in warnings), est.line()]
