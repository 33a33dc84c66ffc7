"""`launcher`: the root command group, lazy subcommand loading and the one error handler."""

from __future__ import annotations

import importlib
import os
import sys

import click

# name -> "module:attribute"; modules are imported only when their command runs or shows help.
COMMANDS = {
    "caption": ("launcher.cli.caption_cmd:caption", "Caption every image and video (Gemini, Replicate)."),
    "config": ("launcher.cli.project_cmd:config", "Show the defaults in effect here and where each comes from."),
    "dataset": ("launcher.cli.dataset_cmd:dataset", "Check (and prepare) a dataset before renting a GPU."),
    "diff": ("launcher.cli.diff_cmd:diff", "What differs between two runs: image, values, dataset, losses."),
    "mcp": ("launcher.cli.mcp_cmd:mcp", "Serve the launcher to an AI assistant (Model Context Protocol, stdio)."),
    "init": ("launcher.cli.project_cmd:init", "Make a project here: lora-gym.toml (defaults) and dataset/."),
    "logs": ("launcher.cli.runs_cmd:logs", "Print a detached run's logs (--follow to stream them)."),
    "publish": ("launcher.cli.publish_cmd:publish", "Publish a run on the Hugging Face Hub, with a ComfyUI workflow."),
    "pull": ("launcher.cli.runs_cmd:pull", "Download a detached run's LoRAs and run.json."),
    "report": ("launcher.cli.report_cmd:report", "Write a run folder's report.html (loss, samples, timings)."),
    "status": ("launcher.cli.runs_cmd:status", "State and cost of a detached run or sweep (one row per run)."),
    "stop": ("launcher.cli.runs_cmd:stop", "Stop a detached run now."),
    "presets": ("launcher.cli.presets_cmd:presets", "List, show and copy training presets."),
    "run": ("launcher.cli.run_cmd:run", "Plan a training run; run it locally, on Modal, RunPod or SkyPilot."),
    "sweep": ("launcher.cli.sweep_cmd:sweep", "One run per combination of a grid of overrides, one cache pass."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx, formatter):
        # Help for the group lists the commands from the table above, without importing them.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="""\b
Examples:
  launcher init && launcher run --preset wan22-t2v-lightning
  launcher presets list
  launcher presets show wan22-t2v-lightning
  launcher run --preset wan22-t2v-lightning --expert high --dataset ./my-dataset --dry-run""")
@click.version_option(package_name="lora-gym", prog_name="launcher")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=lambda ctx, p, v: _debug(v),
              help="Show the traceback of an input error (a path or file that failed) instead of one line.")
def cli():
    """LoRA Gym: train Wan 2.1 / 2.2 LoRAs with musubi-tuner from validated presets."""


_debug_flag = [False]  # set by --debug while the command line is parsed; read by the boundary in main()


def _debug(on: bool) -> None:
    _debug_flag[0] = on


def _fail(lines: list[str], code: int = 2) -> int:
    for line in lines:
        click.echo(f"error: {line}", err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input becomes `error: ...` lines and exit code 2, never a traceback."""
    from launcher.core.errors import INPUT_ERRORS, UserError, debugging, input_problem  # standard library only

    _debug_flag[0] = False
    try:
        result = cli.main(args=argv, prog_name="launcher", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except UserError as exc:
        return _fail(exc.problems, exc.exit_code)
    except click.UsageError as exc:
        hint = f"see `{exc.ctx.command_path} --help`" if exc.ctx else "see `launcher --help`"
        return _fail([f"{exc.format_message().rstrip('.')}: {hint}"])
    except click.ClickException as exc:
        return _fail([exc.format_message()], exc.exit_code)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except INPUT_ERRORS as exc:  # a path or file the checks did not foresee; a bug is any other exception
        if _debug_flag[0] or debugging(os.environ.get("LORA_GYM_DEBUG", "")):
            raise
        return _fail([input_problem(exc, "launcher --debug ...")])
    except (click.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
