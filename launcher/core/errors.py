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
