"""The one exception type for bad user input: each problem is one line that names the fix."""

from __future__ import annotations


class UserError(Exception):
    """Bad input. The CLI and the entrypoint print each problem as `error: ...` and exit 2."""

    exit_code = 2

    def __init__(self, *problems: str):
        self.problems = [p for p in problems if p]
        super().__init__("; ".join(self.problems))


def report(exc: UserError) -> int:
    """Print each problem as one `error:` line on stderr; the exit code to return."""
    import sys

    for problem in exc.problems:
        print(f"error: {problem}", file=sys.stderr, flush=True)
    return exc.exit_code


def closest(word: str, candidates) -> str:
    """` (did you mean 'x'?)` for the nearest candidate, or an empty string."""
    import difflib

    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


# What escapes from user input that no check foresaw: a path that cannot be read or written, a file whose
# content does not parse. Both programs turn these into one `error:` line; anything else is a bug and keeps
# its traceback. LORA_GYM_DEBUG=1 (or `launcher --debug`) shows the traceback for these too.
INPUT_ERRORS = (OSError, ValueError)


def debugging(value: str) -> bool:
    """Whether a LORA_GYM_DEBUG value asks for tracebacks; never an error itself, whatever the value."""
    return value.strip().lower() in ("1", "true", "yes", "on")


def input_problem(exc: BaseException, debug_hint: str) -> str:
    """One line for an input error: the path and what the system said, or the parser's first line."""
    import os

    from launcher.core.secrets import secret_values

    if isinstance(exc, OSError) and exc.filename is not None:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        text = f"{where}: {(exc.strerror or type(exc).__name__).lower()}: check that path and its permissions"
    else:
        text = f"{str(exc).strip() or type(exc).__name__}: check the input it came from"
    text = " ".join(text.split())  # one line, whatever the exception carried
    for value in secret_values(os.environ).values():
        text = text.replace(value, "***")
    return f"{text} ({debug_hint} shows the traceback)"
