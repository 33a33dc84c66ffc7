"""Captioning a folder: which files, in what order, how fast, with what retries, and how results are written.

No SDK is imported here: providers (gemini.py, replicate_provider.py) turn their library's errors into a
`Retry` via the `classify` function they hand to `Caller`, and raise `CaptionError` for a file that cannot be
captioned. Everything that waits goes through `Caller.sleep`, so tests inject a fake clock and Ctrl-C stops
the waiting at once.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from launcher.caption.pacing import AdaptiveRate, RateLimiter  # noqa: F401  (re-exported: the CLI builds them)
from launcher.caption.prompts import anchor_pattern, clean_caption
from launcher.core.dataset import CAPTION_EXTENSION, SUBFOLDERS, caption_problem, media_kind
from launcher.core.errors import UserError


class Provider(Protocol):
    """One captioning service. Raises CaptionError for a file it cannot caption."""

    def caption(self, path: Path, kind: str, prompt: str) -> str: ...


class CaptionError(Exception):
    """This file failed, for the reason in the message; the run goes on with the others."""


class Stopped(Exception):
    """The run was interrupted while this worker was waiting."""


class KeyRejected(Exception):
    """The service refused the key (Caller.rejected says how): no request with it can succeed."""


INTERRUPTED = "\0interrupted"  # a worker's outcome that is neither a caption nor a failure


# ---------------------------------------------------------------------------------------------------- files

@dataclass(frozen=True)
class MediaItem:
    path: Path
    kind: str  # "image" or "video"
    shown: str  # the path relative to the dataset folder, for messages

    @property
    def caption_path(self) -> Path:
        return self.path.with_suffix(CAPTION_EXTENSION)

    def caption_state(self) -> str:
        """"ok", "missing" (absent, empty or invisible: captioning loses nothing) or "unreadable" (not UTF-8:
        the user's own text, which `launcher run` refuses and we never replace without --overwrite)."""
        problem = caption_problem(self.path, self.shown)
        if problem is None:
            return "ok"
        return "unreadable" if "not UTF-8" in problem else "missing"


def discover(root: Path) -> list[MediaItem]:
    """The media in `root` and its images/ and videos/ subfolders, the layout `launcher run` reads."""
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "not found"
        raise UserError(f"dataset folder {root} {what}: pass the folder that holds your images and videos")
    items = []
    for folder, prefix in [(root, ""), *((root / sub, f"{sub}/") for sub in SUBFOLDERS)]:
        if folder.is_dir():
            items += [MediaItem(p, media_kind(p.name), prefix + p.name)
                      for p in sorted(folder.iterdir()) if p.is_file() and media_kind(p.name)]
    if not items:
        raise UserError(f"dataset folder {root} has no images or videos: add .png/.jpg/.jpeg/.webp/.bmp or "
                        ".mp4/.webm/.mov/.mkv files to it (or to its images/ and videos/ subfolders)")
    stems: dict[Path, list[str]] = {}
    for item in items:
        stems.setdefault(item.caption_path, []).append(item.shown)
    clashes = [f"{' and '.join(names)} would share the caption {names[0].rsplit('.', 1)[0]}.txt: rename one"
               for names in stems.values() if len(names) > 1]
    if clashes:
        raise UserError(*clashes)
    return items


# Spelled out: mimetypes depends on the system's tables, and some lack .webp or .mkv.
MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
              ".bmp": "image/bmp", ".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime",
              ".mkv": "video/x-matroska"}


def mime_type(path: Path) -> str:
    return MIME_TYPES[path.suffix.lower()]


@contextlib.contextmanager
def sendable(path: Path):
    """(path, MIME type) of the media as Gemini takes it, which is neither BMP nor Matroska.

    A .bmp is sent as PNG (Pillow) and a .mkv's video stream remuxed, not re-encoded, into MP4 (PyAV); both in a
    temporary folder, never in the dataset. Other files are sent as they are.
    """
    suffix = path.suffix.lower()
    if suffix not in (".bmp", ".mkv"):
        yield path, mime_type(path)
        return
    with tempfile.TemporaryDirectory(prefix="lora-gym-caption-") as tmp:
        target = Path(tmp) / (path.stem + (".png" if suffix == ".bmp" else ".mp4"))
        _bmp_to_png(path, target) if suffix == ".bmp" else _mkv_to_mp4(path, target)
        yield target, mime_type(target)


def _bmp_to_png(source: Path, target: Path) -> None:
    from PIL import Image  # lazy, like every media library: only a .bmp needs it

    with Image.open(source) as image:
        image.save(target, "PNG")


def _mkv_to_mp4(source: Path, target: Path) -> None:
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w", format="mp4") as out:
        video = inp.streams.video[0]
        copy = out.add_stream_from_template(video)
        for packet in inp.demux(video):
            if packet.dts is not None:  # the demuxer's final flush packet carries no data
                packet.stream = copy
                out.mux(packet)


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target, then rename over it: an interrupted run never leaves a half-written caption."""
    # A dot-name, so that `launcher dataset` and musubi-tuner ignore a leftover from a killed process.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        with tmp.open("x", encoding="utf-8") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- pacing and retries

@dataclass(frozen=True)
class Retry:
    """A transient failure: try again, after `after` seconds if the service said so (Retry-After)."""

    reason: str
    after: float | None = None
    throttled: bool = False  # a 429: the pace was too fast (a 5xx says nothing about the pace)


@dataclass(frozen=True)
class Rejected:
    """Not transient, and not about one file: the service refused the key (401, 403). The run stops."""

    reason: str  # what the service said, secrets and all: Job scrubs it before it is shown
    key_var: str  # the environment variable to fix


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (fractions accepted) or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return None


def is_network_error(exc: BaseException) -> bool:
    """Timeouts and dropped connections, from httpx or httpx2 (google-genai uses the latter) or the stdlib."""
    # By class name, so that core needs neither HTTP library installed nor imported.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, TimeoutError | ConnectionError) or bool(
        names & {"TimeoutException", "NetworkError", "RemoteProtocolError"})


@dataclass
class RetryPolicy:
    attempts: int = 6  # tries per request, the first included
    # 429s on a paced request: while a server that counts a rolling minute frees its slots, every waiting worker
    # competes for each, and an unlucky one may lose many times; that says nothing about the file.
    throttled_attempts: int = 30
    base_delay: float = 1.0  # the first backoff; doubles each retry
    max_delay: float = 60.0
    max_retry_after: float = 300.0  # a longer Retry-After means a spent quota: fail the file, don't stall
    random: Callable[[], float] = random.random

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after * (1 + 0.1 * self.random())  # never earlier than asked; spread the herd
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * self.random())  # "equal jitter": a floor, plus randomness


class Caller:
    """Runs one HTTP request at a time for a provider: rate-limited if asked, retried while transient."""

    def __init__(self, policy: RetryPolicy | None = None, limiter: RateLimiter | None = None,
                 sleep: Callable[[float], None] | None = None):
        self.policy, self.limiter = policy or RetryPolicy(), limiter
        self.stop = threading.Event()
        self.rejected: Rejected | None = None  # the first refusal of the key; from then on nothing is sent
        self._sleep = sleep

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._sleep:
            self._sleep(seconds)
        elif self.stop.wait(seconds):  # Ctrl-C sets `stop`: waiting workers give up at once
            raise Stopped()

    def __call__(self, fn: Callable[[], object], classify: Callable[[BaseException], Retry | Rejected | None], *,
                 limited: bool = False, cleanup: bool = False):
        """fn(), retried while `classify` (or `is_network_error`) calls the error transient.

        limited: the call counts against --rpm. cleanup: it runs even after Ctrl-C (once), e.g. deleting an upload.
        Once any call hears that the key is refused, no call sends anything more, cleanup included: with that key
        it would be refused too.
        """
        limiter = self.limiter if limited else None
        failures = throttled = 0  # a 429 on a paced call is the pace's business, and has its own budget
        while True:
            if self.rejected:
                raise KeyRejected()
            if self.stop.is_set() and not (cleanup and failures + throttled == 0):
                raise Stopped()
            sent_at, paced = self._take_slot(limiter) if limiter else (0.0, False)
            if self.rejected:  # refused while this call waited for its slot
                raise KeyRejected()
            try:
                result = fn()
            except Exception as exc:
                retry = classify(exc) or (Retry(f"network error ({type(exc).__name__})")
                                          if is_network_error(exc) else None)
                if isinstance(retry, Rejected):
                    self.rejected = self.rejected or retry
                    self.stop.set()  # wakes every worker waiting for a slot or a backoff
                    raise KeyRejected() from None
                if retry is None:
                    raise
                if retry.after is not None and retry.after > self.policy.max_retry_after:
                    raise CaptionError(f"{retry.reason}, and the service asks to wait {retry.after:.0f} s "
                                       "(quota spent?): run again later to resume") from None
                if limiter and retry.throttled:
                    limiter.throttled(sent_at, retry.after)
                    throttled += 1
                else:
                    failures += 1
                if failures == self.policy.attempts or throttled == self.policy.throttled_attempts:
                    raise CaptionError(f"gave up after {failures + throttled} attempts: {retry.reason}") from None
                self.sleep(self.policy.backoff(failures + throttled, retry.after))
            else:
                if limiter:
                    limiter.answered(sent_at, paced)
                return result

    def _take_slot(self, limiter: RateLimiter) -> tuple[float, bool]:
        """Wait for a start slot: (when it was taken on the limiter's clock, whether the pace held us back)."""
        paced = False
        while (wait := limiter.reserve()) > 0:
            self.sleep(wait)
            if self.stop.is_set():
                raise Stopped()
            paced = True
        return limiter.clock(), paced


# ------------------------------------------------------------------------------------------------ the run

def redact(text: str, hidden: tuple[str, ...]) -> str:
    for secret in hidden:
        text = text.replace(secret, "***")
    return text


def shown(text: str, hidden: tuple[str, ...], limit: int = 300) -> str:
    """`text` as one line of at most `limit` characters, secrets removed FIRST: shortening first could cut a key
    in two, and leave a piece of it that no longer matches the whole."""
    text = " ".join(redact(text, hidden).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class Summary:
    captioned: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    interrupted: bool = False
    pace: RateLimiter | None = None  # the limiter: its rate when the run ended, and the 429s it heard

    def lines(self) -> list[str]:
        head = f"captioned {len(self.captioned)}, skipped {len(self.skipped)}, failed {len(self.failed)}"
        if self.pace is not None and self.captioned:
            head += f"; settled at {self.pace.rate:.0f} requests/min ({self.pace.throttled_count} answered 429)"
        out = [head + (" (interrupted: run the same command again to resume)" if self.interrupted else "")]
        return out + [f"failed: {name}: {reason}" for name, reason in sorted(self.failed)]


@dataclass
class Job:
    provider: Provider
    prompts: dict[str, str]  # kind -> prompt
    anchor: str
    caller: Caller
    concurrency: int = 4
    hidden: tuple[str, ...] = ()  # secrets to scrub from every message

    def caption_one(self, item: MediaItem) -> str:
        """The caption for one file, written beside it; a caption without the anchor is asked for once more."""
        pattern, text = anchor_pattern(self.anchor), ""
        for _ in range(2):
            text = clean_caption(self.provider.caption(item.path, item.kind, self.prompts[item.kind]))
            if pattern.search(text):
                write_atomic(item.caption_path, text)
                return text
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise CaptionError(f"no {self.anchor!r} in the caption, twice (last: {shown!r})")

    def _attempt(self, item: MediaItem) -> str | None:
        try:
            self.caption_one(item)
            return None
        except (Stopped, KeyRejected):
            return INTERRUPTED
        except CaptionError as exc:
            return shown(str(exc), self.hidden)
        except Exception as exc:  # one broken file (or an SDK surprise) must not stop the others
            return shown(f"{type(exc).__name__}: {exc}", self.hidden)

    def run(self, todo: list[MediaItem], summary: Summary, progress: bool = True) -> Summary:
        from tqdm import tqdm  # lazy: `--help` and `--dry-run` stay fast

        bar = tqdm(total=len(todo), unit="file", file=sys.stderr, disable=not progress, dynamic_ncols=True)
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="caption")
        futures = {pool.submit(self._attempt, item): item for item in todo}
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                item, error = futures[future], future.result()
                if error is None:
                    summary.captioned.append(item.shown)
                elif error != INTERRUPTED:
                    summary.failed.append((item.shown, error))
                if self.caller.rejected:  # files not yet begun are not begun at all
                    for waiting in futures:
                        waiting.cancel()
                bar.set_postfix(failed=len(summary.failed), refresh=False)
                bar.update()
            if self.caller.rejected:
                raise UserError(self._rejected_line(summary))
        except KeyboardInterrupt:
            summary.interrupted = True
            self.caller.stop.set()  # waiting workers quit; requests in flight finish and are written whole
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
            pool.shutdown(wait=not summary.interrupted)
        return summary

    def _rejected_line(self, summary: Summary) -> str:
        rejected = self.caller.rejected
        kept = f"; the {len(summary.captioned)} captions written before it are kept" if summary.captioned else ""
        return (f"the service refused the key in {rejected.key_var} ({shown(rejected.reason, self.hidden, 200)}): "
                f"set {rejected.key_var} to a valid key and run the same command again{kept}")
