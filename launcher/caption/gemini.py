"""Gemini through google-genai (its predecessor, google-generativeai, lost support on 2025-11-30).

Images go inline as bytes parts. Videos go through the Files API: upload, poll until ACTIVE, generate, and
delete the upload in every case, so that a failed run does not leave videos on Google's side (they would
otherwise linger for 48 hours and count against the project's storage quota).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from google import genai
from google.genai import errors, types

from launcher.caption import PROVIDERS
from launcher.caption.core import Caller, CaptionError, Rejected, Retry, parse_retry_after, sendable

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
KEY_STATUS = {401, 403}  # UNAUTHENTICATED, PERMISSION_DENIED: the key, not the file
TIMEOUT_S = 300  # per HTTP request; an upload is sent in 8 MiB chunks, each its own request
POLL_INTERVAL_S = 2.0  # between files.get calls while a video is PROCESSING
ACTIVE_TIMEOUT_S = 300.0  # a video that is not ACTIVE by then fails


def classify(exc: BaseException) -> Retry | Rejected | None:
    """Transient: 408, 429 and 5xx. The wait comes from Retry-After, else from the body's RetryInfo.

    The key refused: 401, 403, and the 400 Google answers for a key that does not exist ("API key not valid.
    Please pass a valid API key.", firebase.google.com/docs/ai-logic/error-codes), told by its ErrorInfo reason.
    """
    if not isinstance(exc, errors.APIError):
        return None
    if exc.code in KEY_STATUS or exc.code == 400 and _error_info_reason(exc.details) == "API_KEY_INVALID":
        return Rejected(f"{exc.code} {exc.status or 'error'} from Gemini: {exc.message or 'no message'}",
                        PROVIDERS["gemini"].key_var)
    if exc.code not in RETRY_STATUS:
        return None
    headers = getattr(exc.response, "headers", None)
    after = parse_retry_after(headers.get("retry-after")) if headers is not None else None
    return Retry(f"{exc.code} {exc.status or 'error'} from Gemini", after if after is not None else
                 _retry_info_delay(exc.details), throttled=exc.code == 429)


def _retry_info_delay(details) -> float | None:
    # Gemini's 429 body carries google.rpc.RetryInfo, {"retryDelay": "17s"}, where a header may be missing.
    detail = _detail(details, "RetryInfo")
    with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
        return float(str(detail["retryDelay"]).rstrip("s"))
    return None


def _error_info_reason(details) -> str | None:
    # google.rpc.ErrorInfo: {"reason": "API_KEY_INVALID", "domain": "googleapis.com", ...}
    detail = _detail(details, "ErrorInfo")
    return detail.get("reason") if isinstance(detail, dict) else None


def _detail(details, kind: str) -> dict | None:
    """The first google.rpc detail of type `kind` in an error body, if any."""
    with contextlib.suppress(KeyError, TypeError, AttributeError):
        for detail in details["error"]["details"]:
            if str(detail.get("@type", "")).endswith(kind):
                return detail
    return None


class GeminiProvider:
    def __init__(self, api_key: str, model: str, caller: Caller, base_url: str | None = None):
        self.model, self.caller = model, caller
        self.poll_interval, self.active_timeout = POLL_INTERVAL_S, ACTIVE_TIMEOUT_S
        # No retry_options: the client then tries once (google-genai 3.6 _api_client.py retry_args: None means
        # stop_after_attempt(1)), so every 429 reaches Caller, which owns retries, pacing and Retry-After.
        options = types.HttpOptions(base_url=base_url, timeout=TIMEOUT_S * 1000)
        # vertexai=False: GOOGLE_GENAI_USE_VERTEXAI in the environment must not reroute an API-key client.
        self.client = genai.Client(vertexai=False, api_key=api_key, http_options=options)

    def caption(self, path: Path, kind: str, prompt: str) -> str:
        with sendable(path) as (media, mime):
            if kind == "image":
                return self._generate(types.Part.from_bytes(data=media.read_bytes(), mime_type=mime), prompt)
            config = types.UploadFileConfig(mime_type=mime, display_name=path.name)
            uploaded = self.caller(lambda: self.client.files.upload(file=media, config=config), classify)
        try:
            active = self._wait_until_active(uploaded)
            return self._generate(types.Part.from_uri(file_uri=active.uri, mime_type=active.mime_type), prompt)
        finally:
            self._delete(uploaded.name)

    def _generate(self, media: types.Part, prompt: str) -> str:
        # The media before the text: the order Google recommends for a single image or video.
        response = self.caller(lambda: self.client.models.generate_content(model=self.model, contents=[media, prompt]),
                               classify, limited=True)
        text = response.text
        if not text or not text.strip():
            candidates = response.candidates or []
            reason = candidates[0].finish_reason if candidates else getattr(response.prompt_feedback, "block_reason",
                                                                           None)
            raise CaptionError(f"{self.model} returned no text (finish reason: {reason or 'none given'})")
        return text

    def _wait_until_active(self, file: types.File) -> types.File:
        waited = 0.0
        while _state(file) not in ("ACTIVE", "FAILED"):
            if waited >= self.active_timeout:
                raise CaptionError(f"the video was still {_state(file)} in Gemini's Files API after "
                                   f"{self.active_timeout:.0f} s")
            self.caller.sleep(self.poll_interval)
            waited += self.poll_interval
            file = self.caller(lambda name=file.name: self.client.files.get(name=name), classify)
        if _state(file) == "FAILED":
            raise CaptionError("Gemini could not process the video (file state FAILED): check that it plays")
        return file

    def _delete(self, name: str | None) -> None:
        # Best effort: the caption's outcome is already decided, and an undeletable upload expires in 48 h.
        with contextlib.suppress(Exception):
            self.caller(lambda: self.client.files.delete(name=name), classify, cleanup=True)


def _state(file: types.File) -> str:
    state = file.state
    return str(getattr(state, "value", state) or "STATE_UNSPECIFIED")
