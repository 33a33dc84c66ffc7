"""The one subprocess runner of the container entrypoint.

Every step (cache latents, cache text encoder outputs, train, ...) goes through `run_step`, so that all
steps log the same way (`[name] line`, live, including tqdm progress) and react to SIGTERM/SIGINT the
same way (forwarded to the whole step, escalated to SIGKILL if it does not stop).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TextIO

_FORWARDED = (signal.SIGTERM, signal.SIGINT)
# tqdm redraws with a bare "\r": treating it as a line break makes progress visible in logs live.
_LINE_BREAK = re.compile(r"[\r\n]")
_CHUNK = 65536
# How long one select() waits: bounds how late the kill_after deadline and child exit are noticed.
_POLL_S = 0.1


# The image's world-writable home (images/Dockerfile): for a --user whose account the image lacks.
SHARED_HOME = "/home/lora"


def step_environment(environ: Mapping[str, str], interpreter: str = sys.executable,
                     shared_home: str = SHARED_HOME) -> dict[str, str]:
    """The environment every step runs with: this interpreter's bin folder first on PATH, so `python` and
    musubi's scripts are the image's venv even where a login shell reset PATH (SkyPilot runs its jobs through
    `bash -i` with the environment of a login shell, where Debian's /etc/profile sets PATH anew:
    sky/skylet/log_lib.py, sky/provision/docker_utils.py SETUP_ENV_VARS_CMD); a HOME that can be written, as
    torch and triton keep caches there (root's /root, or SHARED_HOME for a --user with no account, whose HOME
    is /); unbuffered output and no Hub access (tokenizers come from the image's Hub cache)."""
    env = dict(environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    bin_dir = os.path.dirname(os.path.abspath(interpreter))
    if env.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
    home = env.get("HOME", "")
    if not (home and os.path.isdir(home) and os.access(home, os.W_OK | os.X_OK)) and os.path.isdir(shared_home):
        env["HOME"] = shared_home
    return env


def format_argv(argv: Sequence[str]) -> str:
    """Shell-quoted command line, for logs only (we never run through a shell)."""
    return shlex.join(list(argv))


def _emit(out: TextIO, name: str, line: str) -> None:
    # Flush per line: the container's stdout is usually a pipe (block-buffered) and logs must be live.
    out.write(f"[{name}] {line}\n")
    out.flush()


class _Forwarder:
    """Forwards our SIGTERM/SIGINT to the child's process group and remembers when to SIGKILL."""

    def __init__(self, proc: subprocess.Popen[bytes], kill_after: float,
                 on_signal: Callable[[int], None] | None = None) -> None:
        self.proc = proc
        self.kill_after = kill_after
        self.kill_at: float | None = None
        self.on_signal = on_signal

    def handle(self, signum: int, _frame: object) -> None:
        self.signal_group(signum)
        if self.on_signal is not None:  # lets the caller stop after this step, whatever its exit code
            self.on_signal(signum)
        if self.kill_at is None:  # the first signal starts the grace period; repeats do not extend it
            self.kill_at = time.monotonic() + self.kill_after

    def signal_group(self, signum: int) -> None:
        # The child runs in its own session (so a terminal Ctrl-C does not hit it twice); the group
        # id is its pid. Skip once it has been reaped: the id could be reused by then.
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def escalate_if_due(self) -> None:
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            self.signal_group(signal.SIGKILL)
            self.kill_at = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        # signal.signal() only works in the main thread; from another thread the step still runs,
        # but signals are not forwarded (they are delivered to the main thread's handlers anyway).
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in _FORWARDED}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                # None means "installed outside Python"; the closest we can restore is the default.
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _pump(proc: subprocess.Popen[bytes], name: str, out: TextIO, forwarder: _Forwarder) -> None:
    """Copies the child's merged output to `out` line by line until EOF."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    # Incremental decoding: a multi-byte UTF-8 character may be split across two reads.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while True:
        forwarder.escalate_if_due()
        ready, _, _ = select.select([fd], [], [], _POLL_S)
        if not ready:
            # A grandchild that left the group may hold the pipe open forever: stop once the child
            # itself is gone and nothing more is coming.
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, _CHUNK)
        pending += decoder.decode(chunk, final=not chunk)
        *lines, pending = _LINE_BREAK.split(pending)
        for line in lines:
            if line:  # "\r\n" and blank lines would only add noise
                _emit(out, name, line)
        if not chunk:
            break
    if pending:
        _emit(out, name, pending)


def _exit_code(returncode: int) -> int:
    # Popen reports death by signal N as -N; callers and shells expect 128+N.
    return 128 - returncode if returncode < 0 else returncode


def run_step(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    out: TextIO = sys.stdout,
    kill_after: float = 30.0,
    on_signal: Callable[[int], None] | None = None,
) -> int:
    """Runs argv (no shell), streams its output prefixed with `[name] `, returns its exit code.

    Death by signal N returns 128+N, a missing executable 127. While it runs, SIGTERM/SIGINT sent to
    us are forwarded to the child's process group (main thread only, see `_Forwarder.installed`) and
    the group is SIGKILLed if still alive `kill_after` seconds later; `on_signal` hears each one.
    """
    argv = list(argv)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,  # a step must never wait for input in a container
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one pipe keeps stdout and stderr lines in order
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        if cwd is not None and exc.filename == cwd:  # a missing cwd is our bug, not a missing command
            raise
        _emit(out, name, f"error: command not found: {argv[0]}")
        return 127
    forwarder = _Forwarder(proc, kill_after, on_signal)
    try:
        with forwarder.installed():
            _pump(proc, name, out, forwarder)
            while proc.poll() is None:  # output closed early: keep forwarding/escalating until it exits
                forwarder.escalate_if_due()
                time.sleep(_POLL_S)
    finally:
        assert proc.stdout is not None
        proc.stdout.close()
        if proc.poll() is None:  # we failed (e.g. writing to `out`): do not leave the step running
            forwarder.signal_group(signal.SIGKILL)
            proc.wait()
    return _exit_code(proc.returncode)
