"""Replicate through the `replicate` client (named replicate_provider so that it never shadows the library).

Each file is uploaded with the client's Files API (multipart, not base64 inside the JSON body), one prediction
is created for it, and that prediction is polled until it ends. A prediction still running is only ever
polled: retries apply to each HTTP request (the upload, the create that the service refused, one poll), never
to a prediction that exists, so a slow model is not paid for twice.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import replicate
from replicate.exceptions import ReplicateError

from launcher.caption import PROVIDERS, parse_replicate_ref
from launcher.caption.core import Caller, CaptionError, Rejected, Retry, parse_retry_after, sendable

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
KEY_STATUS = {401, 403}  # the token is wrong, or may not do this: no file would fare better
TERMINAL = ("succeeded", "failed", "canceled")
POLL_INTERVAL_S = 1.0
PREDICTION_TIMEOUT_S = 600.0  # a prediction still running after this is cancelled and the file fails


class TransientStatus(Exception):
    """A retryable HTTP status. ReplicateError drops the response headers, so Retry-After travels in this."""

    def __init__(self, status: int, after: float | None):
        super().__init__(f"HTTP {status} from Replicate")
        self.status, self.after = status, after


def _raise_transient(response) -> None:
    # An httpx response hook: it sees every final response (after the client's own GET retries), headers intact.
    if response.status_code in RETRY_STATUS:
        raise TransientStatus(response.status_code, parse_retry_after(response.headers.get("retry-after")))


def classify(exc: BaseException) -> Retry | Rejected | None:
    # Only the POST that creates a prediction is paced. The client's RetryTransport (replicate 1.0 client.py)
    # retries GET/PUT/DELETE on 429/503/504 by itself, never POST, so every 429 on a create reaches the pace.
    if isinstance(exc, TransientStatus):
        return Retry(str(exc), exc.after, throttled=exc.status == 429)
    if isinstance(exc, ReplicateError) and exc.status in KEY_STATUS:
        said = ": ".join(part for part in (exc.title, exc.detail) if part) or "no detail"
        return Rejected(f"HTTP {exc.status} from Replicate: {said}", PROVIDERS["replicate"].key_var)
    if isinstance(exc, ReplicateError) and exc.status in RETRY_STATUS:
        return Retry(f"HTTP {exc.status} from Replicate", throttled=exc.status == 429)
    return None


def output_text(output) -> str:
    """Language models on Replicate answer with a list of text chunks (an iterator output), or one string."""
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(chunk, str) for chunk in output):
        return "".join(output)
    raise CaptionError(f"unexpected output from the model: {type(output).__name__}, not text")


class ReplicateProvider:
    def __init__(self, api_key: str, model: str, caller: Caller, base_url: str | None = None):
        self.model, self.version = parse_replicate_ref(model)
        self.caller = caller
        self.poll_interval, self.timeout = POLL_INTERVAL_S, PREDICTION_TIMEOUT_S
        self.client = replicate.Client(api_token=api_key, base_url=base_url,
                                       event_hooks={"response": [_raise_transient]})

    def caption(self, path: Path, kind: str, prompt: str) -> str:
        with sendable(path) as (media, mime):
            upload = self.caller(lambda: self.client.files.create(media, content_type=mime), classify)
        try:
            # google/gemini-2.5-flash's input schema: a prompt, and lists of image and video URLs.
            media_input = {"prompt": prompt, "images" if kind == "image" else "videos": [upload.urls["get"]]}
            prediction = self.caller(lambda: self._create(media_input), classify, limited=True)
            prediction = self._wait(prediction)
        finally:
            with contextlib.suppress(Exception):  # best effort: uploads expire on their own
                self.caller(lambda: self.client.files.delete(upload.id), classify, cleanup=True)
        if prediction.status != "succeeded":
            reason = prediction.error or "no reason given"
            raise CaptionError(f"prediction {prediction.id} {prediction.status}: {reason}")
        return output_text(prediction.output)

    def _create(self, media_input: dict):
        if self.version:
            return self.client.predictions.create(version=self.version, input=media_input)
        return self.client.models.predictions.create(model=self.model, input=media_input)

    def _wait(self, prediction):
        waited = 0.0
        try:
            while prediction.status not in TERMINAL:
                if waited >= self.timeout:
                    raise CaptionError(f"prediction {prediction.id} still {prediction.status} after "
                                       f"{self.timeout:.0f} s: cancelled")
                self.caller.sleep(self.poll_interval)
                waited += self.poll_interval
                prediction = self.caller(lambda pid=prediction.id: self.client.predictions.get(pid), classify)
        except BaseException:
            # Interrupted or timed out: stop the model so it does not run (and bill) for nothing.
            with contextlib.suppress(Exception):
                self.caller(lambda: self.client.predictions.cancel(prediction.id), classify, cleanup=True)
            raise
        return prediction
