"""Tests for lora_gym_entrypoint.runner: output prefixing, exit codes, signal forwarding."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from lora_gym_entrypoint.runner import format_argv, run_step


def _script(tmp_path: Path, body: str, name: str = "child.py") -> list[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def _run(tmp_path: Path, body: str, **kwargs: object) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = run_step("step", _script(tmp_path, body), out=out, **kwargs)
    return code, out.getvalue().splitlines()


class _SignalOnReady(io.StringIO):
    """An `out` that sends SIGTERM to this process once the child says "ready"."""

    def write(self, s: str) -> int:
        n = super().write(s)
        if s.startswith("[step] ready"):
            os.kill(os.getpid(), signal.SIGTERM)  # handled by run_step's handler in the main thread
        return n


def test_stdout_and_stderr_lines_are_prefixed(tmp_path: Path) -> None:
    code, lines = _run(
        tmp_path,
        """
        import sys
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        """,
    )
    assert code == 0
    assert lines == ["[step] to stdout", "[step] to stderr"]


def test_carriage_returns_split_lines_and_empty_lines_collapse(tmp_path: Path) -> None:
    code, lines = _run(
        tmp_path,
        r"""
        import sys
        sys.stdout.buffer.write(b"10%\r50%\r100%\r\n\n\nbad \xff byte\ntail without newline")
        """,
    )
    assert code == 0
    assert lines == [
        "[step] 10%",
        "[step] 50%",
        "[step] 100%",
        "[step] bad \ufffd byte",
        "[step] tail without newline",
    ]


def test_partial_progress_line_is_emitted_before_child_exits(tmp_path: Path) -> None:
    seen: dict[str, float] = {}

    class Stamped(io.StringIO):
        def write(self, s: str) -> int:
            seen.setdefault(s.strip(), time.monotonic())
            return super().write(s)

    argv = _script(
        tmp_path, 'import sys, time\nsys.stdout.write("50%\\r"); sys.stdout.flush(); time.sleep(0.6)\n'
    )
    run_step("step", argv, out=Stamped())
    assert time.monotonic() - seen["[step] 50%"] > 0.3


def test_exit_code_is_passed_through(tmp_path: Path) -> None:
    code, _ = _run(tmp_path, "import sys\nsys.exit(3)\n")
    assert code == 3


def test_killed_by_signal_returns_128_plus_signal(tmp_path: Path) -> None:
    code, _ = _run(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    assert code == 128 + signal.SIGTERM


def test_missing_command_returns_127(tmp_path: Path) -> None:
    out = io.StringIO()
    code = run_step("step", [str(tmp_path / "no-such-binary"), "--flag"], out=out)
    assert code == 127
    assert out.getvalue() == f"[step] error: command not found: {tmp_path / 'no-such-binary'}\n"


def test_env_and_cwd_are_used(tmp_path: Path) -> None:
    body = "import os\nprint(os.environ['LG_TEST'], os.getcwd(), flush=True)\n"
    code, lines = _run(tmp_path, body, env={"LG_TEST": "hello"}, cwd=str(tmp_path))
    assert code == 0
    assert lines == [f"[step] hello {os.path.realpath(tmp_path)}"]


def test_signal_is_forwarded_to_child(tmp_path: Path) -> None:
    child = _script(
        tmp_path,
        """
        import signal, sys, time
        def on_term(signum, frame):
            print("got TERM", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        time.sleep(10)
        """,
    )
    outer = _script(
        tmp_path,
        f"""
        import sys
        from lora_gym_entrypoint.runner import run_step
        sys.exit(run_step("step", {child!r}))
        """,
        name="outer.py",
    )
    proc = subprocess.Popen(outer, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "[step] ready\n"
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=5) == 7
    finally:
        proc.kill()
    assert "[step] got TERM" in rest


def test_child_ignoring_term_is_killed_after_grace(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    argv = _script(
        tmp_path,
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(10)
        """,
    )
    start = time.monotonic()
    code = run_step("step", argv, out=_SignalOnReady(), kill_after=1)
    assert code == 128 + signal.SIGKILL
    assert 0.9 < time.monotonic() - start < 3
    assert signal.getsignal(signal.SIGTERM) is before  # previous handler restored


def test_runs_from_non_main_thread_without_installing_handlers(tmp_path: Path) -> None:
    argv = _script(tmp_path, "print('hi')\n")
    result: list[int] = []
    out = io.StringIO()
    thread = threading.Thread(target=lambda: result.append(run_step("step", argv, out=out)))
    thread.start()
    thread.join(timeout=5)
    assert result == [0]
    assert out.getvalue() == "[step] hi\n"


def test_format_argv_quotes_for_logs() -> None:
    assert format_argv(["accelerate", "launch", "--config", "my file.toml"]) == (
        "accelerate launch --config 'my file.toml'"
    )


def test_steps_get_the_interpreters_bin_first_and_a_writable_home(tmp_path):
    from lora_gym_entrypoint.runner import step_environment

    venv_python, shared = tmp_path / "venv" / "bin" / "python", tmp_path / "shared-home"
    shared.mkdir()
    login_shell = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "no-such-home")}  # a --user with no account
    env = step_environment(login_shell, str(venv_python), str(shared))
    assert env["PATH"] == f"{venv_python.parent}:/usr/bin:/bin" and env["HOME"] == str(shared)
    assert env["PYTHONUNBUFFERED"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    again = step_environment(env, str(venv_python), str(shared))
    assert again["PATH"] == env["PATH"]  # not prefixed twice
    own_home = {"PATH": "", "HOME": str(tmp_path)}
    assert step_environment(own_home, str(venv_python), str(shared))["HOME"] == str(tmp_path)
