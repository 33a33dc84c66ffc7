"""`launcher caption`: driven through the real google-genai and replicate clients against loopback fakes.

Media are made here (Pillow stills, PyAV clips). The fakes put a digest of the media bytes they received in
each caption, so a test can tell that every file got its own caption. Waits are injected or shrunk: the
whole file runs in a few seconds.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import httpx
import pytest
from conftest import clean_env
from fakes.fake_gemini import FakeGemini, Faults, media_tag
from fakes.fake_replicate import FakeReplicate
from google.genai import errors as genai_errors
from PIL import Image

from launcher.caption import LORA_TYPES, core, gemini, pacing, prompts, replicate_provider
from launcher.cli.main import main
from launcher.core.dataset import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

GEMINI_KEY = "AIza-test-SECRET-gemini-0123456789"
REPLICATE_KEY = "r8_test-SECRET-replicate-0123456789"
FAST = "100000"  # --rpm that never binds
RetryPolicy = core.RetryPolicy  # the real one: the `fast` fixture swaps core's for one with tiny delays


def make_image(path: Path, seed: int) -> Path:
    Image.new("RGB", (16, 16), (seed * 37 % 256, seed * 91 % 256, 120)).save(path)
    return path


def make_video(path: Path, seed: int) -> Path:
    with av.open(str(path), "w", format="matroska" if path.suffix == ".mkv" else "mp4") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(4):
            frame = av.VideoFrame.from_image(Image.new("RGB", (32, 32), (seed * 40 % 256, i * 60, 0)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def expected(path: Path, anchor: str = "annika") -> str:
    return f"a medium shot of {anchor} turning toward the camera, straight on [{media_tag(path.read_bytes())}]\n"


@pytest.fixture
def media(tmp_path) -> Path:
    """top.jpg, images/a.png, images/b.webp, videos/clip.mp4, and a file that is not media."""
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "videos").mkdir()
    make_image(root / "top.jpg", 1)
    make_image(root / "images" / "a.png", 2)
    make_image(root / "images" / "b.webp", 3)
    make_video(root / "videos" / "clip.mp4", 4)
    (root / "notes.md").write_text("not media")
    return root


@pytest.fixture
def fast(monkeypatch):
    """Backoff and polling in milliseconds instead of seconds; the pace starts at --rpm, not at 10 a minute."""
    monkeypatch.setattr(core, "RetryPolicy", functools.partial(core.RetryPolicy, base_delay=0.001, max_delay=0.01))
    monkeypatch.setattr(pacing, "START_RPM", 1_000_000)
    monkeypatch.setattr(gemini, "POLL_INTERVAL_S", 0.001)
    monkeypatch.setattr(replicate_provider, "POLL_INTERVAL_S", 0.001)


@pytest.fixture
def gemini_api(monkeypatch, fast):
    with FakeGemini(api_key=GEMINI_KEY) as fake:
        monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
        monkeypatch.setenv("GEMINI_BASE_URL", fake.base_url)
        yield fake


@pytest.fixture
def replicate_api(monkeypatch, fast):
    with FakeReplicate(api_token=REPLICATE_KEY) as fake:
        monkeypatch.setenv("REPLICATE_API_TOKEN", REPLICATE_KEY)
        monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
        yield fake


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["caption", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def recording_caller(**policy) -> tuple[core.Caller, list[float]]:
    sleeps: list[float] = []
    return core.Caller(RetryPolicy(**policy), sleep=sleeps.append), sleeps


# ------------------------------------------------------------------------------------------------ Gemini

def test_gemini_images_inline_videos_through_files_api_and_existing_captions_kept(media, gemini_api, capsys):
    (media / "images" / "b.txt").write_text("hand-written, keep me\n")
    code, out, err = cli(capsys, media, "--anchor", "annika", "--rpm", FAST)
    assert code == 0, err
    assert out.splitlines()[0].startswith("captioned 3, skipped 1, failed 0; settled at ")
    for path in (media / "top.jpg", media / "images" / "a.png", media / "videos" / "clip.mp4"):
        assert path.with_suffix(".txt").read_text() == expected(path)
    assert (media / "images" / "b.txt").read_text() == "hand-written, keep me\n"
    video_id = gemini_api.deleted[0]
    flow = [event for event, subject in gemini_api.events if subject == video_id]
    assert flow == ["upload", "poll:PROCESSING", "poll:ACTIVE", "generate", "delete"]
    assert gemini_api.files == {} and gemini_api.generated == 3
    assert "file/s" in err or "s/file" in err  # the progress bar, with its rate/ETA, is on stderr


@pytest.mark.parametrize("setup, reason", [
    (lambda fake: fake.faults.fail_next("generate", 400), "400 INVALID_ARGUMENT"),
    (lambda fake: setattr(fake, "final_state", "FAILED"), "file state FAILED"),
    (lambda fake: setattr(fake, "processing_polls", 10**6), "still PROCESSING"),
], ids=["generation-fails", "processing-fails", "never-active"])
def test_gemini_video_upload_is_deleted_whatever_happens(tmp_path, gemini_api, capsys, monkeypatch, setup, reason):
    monkeypatch.setattr(gemini, "ACTIVE_TIMEOUT_S", 0.02)
    make_video(tmp_path / "clip.mp4", 1)
    setup(gemini_api)
    code, out, _ = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", FAST)
    assert code == 1
    assert "failed: clip.mp4: " in out and reason in out
    assert gemini_api.files == {} and len(gemini_api.deleted) == 1
    assert not (tmp_path / "clip.txt").exists()


def test_bmp_and_mkv_are_sent_as_png_and_mp4_from_outside_the_dataset(tmp_path, gemini_api, capsys):
    make_image(tmp_path / "still.bmp", 1)
    make_video(tmp_path / "clip.mkv", 2)
    gemini_api.reply = lambda prompt, media: f"annika {media[:12]!r}"  # the first bytes tell the format
    code, out, _ = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", FAST)
    assert code == 0, out
    assert "\\x89PNG" in (tmp_path / "still.txt").read_text() and "ftyp" in (tmp_path / "clip.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "clip.txt", "still.bmp", "still.txt"]


def test_overwrite_recaptions_files_that_have_captions(media, gemini_api, capsys):
    for path in media.rglob("*.*"):
        if path.suffix in (".jpg", ".png", ".webp", ".mp4"):
            path.with_suffix(".txt").write_text("old\n")
    assert cli(capsys, media, "--anchor", "annika", "--rpm", FAST)[1].startswith("nothing to caption: all 4")
    code, out, _ = cli(capsys, media, "--anchor", "annika", "--rpm", FAST, "--overwrite")
    assert code == 0 and out.startswith("captioned 4, skipped 0, failed 0")
    assert (media / "images" / "a.txt").read_text() == expected(media / "images" / "a.png")


def test_caption_without_the_anchor_is_asked_for_once_more(tmp_path, gemini_api, capsys):
    make_image(tmp_path / "one.png", 1)
    answers = iter(["a cat asleep on a sofa", "a close up of Annika's smile, straight on"])
    gemini_api.reply = lambda prompt, media: next(answers)
    code, out, _ = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", FAST)
    assert code == 0 and gemini_api.generated == 2
    assert (tmp_path / "one.txt").read_text() == "a close up of Annika's smile, straight on\n"


def test_caption_still_without_the_anchor_fails_the_file(tmp_path, gemini_api, capsys):
    make_image(tmp_path / "one.png", 1)
    gemini_api.reply = lambda prompt, media: "two annikas in an empty room, wide shot"  # not the whole word
    code, out, _ = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", FAST)
    assert code == 1 and gemini_api.generated == 2
    assert "failed: one.png: no 'annika' in the caption, twice" in out
    assert not (tmp_path / "one.txt").exists()


def test_gemini_429_waits_as_long_as_retry_after_says(tmp_path, gemini_api):
    caller, sleeps = recording_caller()
    provider = gemini.GeminiProvider(api_key=GEMINI_KEY, model="gemini-test", caller=caller,
                                     base_url=gemini_api.base_url)
    gemini_api.faults.fail_next("generate", 429, retry_after="7")
    assert "annika" in provider.caption(make_image(tmp_path / "a.png", 1), "image", "caption annika")
    assert len(sleeps) == 1 and 7.0 <= sleeps[0] <= 7.7
    assert gemini_api.count("POST", "generateContent") == 2


def test_gemini_retry_delay_from_the_body_when_no_header():
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}}
    assert gemini.classify(genai_errors.ClientError(429, body)) == core.Retry(
        "429 RESOURCE_EXHAUSTED from Gemini", 17, throttled=True)
    assert gemini.classify(genai_errors.ClientError(400, {"error": {"code": 400}})) is None


def test_gemini_5xx_backs_off_exponentially_then_gives_up(tmp_path, gemini_api):
    caller, sleeps = recording_caller(random=lambda: 0.0)  # no jitter: the floor of each backoff
    provider = gemini.GeminiProvider(api_key=GEMINI_KEY, model="m", caller=caller, base_url=gemini_api.base_url)
    image = make_image(tmp_path / "a.png", 1)
    gemini_api.faults.fail_next("generate", 500, times=2)
    assert "annika" in provider.caption(image, "image", "annika")
    assert sleeps == [0.5, 1.0]
    gemini_api.faults.fail_next("generate", 503, times=6)
    with pytest.raises(core.CaptionError, match="gave up after 6 attempts: 503 UNAVAILABLE"):
        provider.caption(image, "image", "annika")
    gemini_api.faults.fail_next("generate", 429, retry_after="3600")  # a spent daily quota: fail, don't stall
    with pytest.raises(core.CaptionError, match="asks to wait 3600 s"):
        provider.caption(image, "image", "annika")


def test_timeouts_and_dropped_connections_are_retried():
    import httpx2

    caller, sleeps = recording_caller()
    for error in (httpx.ReadTimeout("slow"), httpx2.ConnectError("refused"), TimeoutError()):
        outcomes = iter([error, "ok"])

        def flaky(outcomes=outcomes):
            outcome = next(outcomes)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        assert caller(flaky, lambda exc: None) == "ok"
    assert len(sleeps) == 3
    with pytest.raises(ValueError):  # anything else is not retried
        caller(lambda: (_ for _ in ()).throw(ValueError("bad")), lambda exc: None)


def test_faults_lose_or_duplicate_no_caption(tmp_path, gemini_api, capsys):
    images = [make_image(tmp_path / f"img{i:02}.png", i) for i in range(24)]
    gemini_api.faults = Faults(rate_429=0.2, rate_500=0.05, retry_after="0", seed=7)
    code, out, _ = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", FAST, "--concurrency", "8")
    assert code == 0, out
    assert [p.with_suffix(".txt").read_text() for p in images] == [expected(p) for p in images]
    assert gemini_api.generated == 24 and gemini_api.count("POST", "generateContent") > 24


def test_summary_says_the_settled_pace_and_the_429s_it_heard(tmp_path, gemini_api, capsys):
    images = [make_image(tmp_path / f"img{i:02}.png", i) for i in range(4)]
    gemini_api.faults.fail_next("generate", 429, retry_after="0")
    code, out, _ = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", "600")  # the ceiling, and the start here
    assert code == 0 and [p.with_suffix(".txt").read_text() for p in images] == [expected(p) for p in images]
    settled = re.fullmatch(r"captioned 4, skipped 0, failed 0; settled at (\d+) requests/min \(1 answered 429\)",
                           out.splitlines()[0])
    assert settled and int(settled[1]) < 600  # cut by the 429, and never above --rpm


def test_prompt_file_replaces_the_builtin_prompts(media, gemini_api, capsys, tmp_path):
    (tmp_path / "mine.txt").write_text("Describe this {media} of {anchor} in five words.")
    code, _, _ = cli(capsys, media, "--anchor", "annika", "--rpm", FAST, "--prompt-file", tmp_path / "mine.txt")
    assert code == 0
    assert sorted(set(gemini_api.prompts)) == ["Describe this image of annika in five words.",
                                               "Describe this video of annika in five words."]


# --------------------------------------------------------------------------------------------- Replicate

def test_replicate_uploads_files_and_polls_one_prediction_per_file(media, replicate_api, capsys):
    replicate_api.latency = 0.03  # predictions run a while: they must be polled, not re-created
    replicate_api.faults.fail_next("get", 500)  # a failed poll is retried as a poll
    code, out, err = cli(capsys, media, "--anchor", "annika", "--rpm", FAST, "--provider", "replicate")
    assert code == 0, err
    for name in ("top.jpg", "images/a.png", "images/b.webp", "videos/clip.mp4"):
        path = media / name
        assert path.with_suffix(".txt").read_text() == expected(path)
    assert len(replicate_api.created) == 4 and replicate_api.count("GET", "/v1/predictions/") > 4
    assert replicate_api.count("POST", "^/v1/files$") == 4 and replicate_api.files == {}  # uploaded, then deleted
    inputs = [body["input"] for body in replicate_api.created]
    assert sorted(key for i in inputs for key in i if key != "prompt") == ["images", "images", "images", "videos"]
    assert all(url.startswith(replicate_api.base_url) for i in inputs for url in i.get("images", i.get("videos")))


def test_replicate_version_reference_and_429_on_create(tmp_path, replicate_api):
    caller, sleeps = recording_caller()
    provider = replicate_provider.ReplicateProvider(api_key=REPLICATE_KEY, model="acme/captioner:abc123",
                                                    caller=caller, base_url=replicate_api.base_url)
    provider.poll_interval = 0.001
    replicate_api.faults.fail_next("create", 429, retry_after="5")
    assert "annika" in provider.caption(make_image(tmp_path / "a.png", 1), "image", "annika")
    assert 5.0 <= sleeps[0] <= 5.5  # Retry-After survived the client, through the response hook
    assert replicate_api.count("POST", "^/v1/predictions$") == 2 and len(replicate_api.created) == 1
    assert replicate_api.created[0]["version"] == "abc123"


# ------------------------------------------------------------------------------------------- the runner

class SlowProvider:
    """Stands in for a service: takes `latency` per caption, and goes through the caller like a real one."""

    def __init__(self, caller, latency):
        self.caller, self.latency, self.active, self.peak = caller, latency, 0, 0
        self.lock = threading.Lock()

    def caption(self, path, kind, prompt):
        def request():
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            time.sleep(self.latency)
            with self.lock:
                self.active -= 1
            return f"annika in {path.name}"
        return self.caller(request, lambda exc: None, limited=True)


def run_slow_job(tmp_path, rpm: float, concurrency: int) -> tuple[SlowProvider, core.Summary, float]:
    items = [core.MediaItem(make_image(tmp_path / f"{i}.png", i), "image", f"{i}.png") for i in range(16)]
    caller = core.Caller(limiter=core.RateLimiter(rpm))
    provider = SlowProvider(caller, latency=0.04)
    job = core.Job(provider, {"image": "p"}, "annika", caller, concurrency=concurrency)
    start = time.monotonic()
    summary = job.run(items, core.Summary(), progress=False)
    return provider, summary, time.monotonic() - start


def test_files_are_captioned_concurrently(tmp_path):
    provider, summary, elapsed = run_slow_job(tmp_path, rpm=100_000, concurrency=4)
    assert len(summary.captioned) == 16 and provider.peak == 4
    assert elapsed < 0.5  # 16 × 40 ms one at a time would take 0.64 s


def test_the_rate_limit_binds_across_all_workers(tmp_path):
    provider, summary, elapsed = run_slow_job(tmp_path, rpm=1200, concurrency=8)
    assert len(summary.captioned) == 16
    assert 0.75 <= elapsed <= 1.5  # 16 starts at 20 per second, whatever the concurrency


def test_interrupted_write_leaves_the_old_caption_and_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    target.write_text("old caption\n")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        core.write_atomic(target, "new caption")
    assert target.read_text() == "old caption\n" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_ctrl_c_leaves_only_whole_captions_and_the_next_run_resumes(tmp_path, gemini_api, capsys):
    images = [make_image(tmp_path / f"img{i:02}.png", i) for i in range(12)]
    gemini_api.latency = 0.05
    running = threading.Event()
    running.set()

    def press_ctrl_c():  # a real SIGINT, as from a terminal, once the first caption is written
        deadline = time.monotonic() + 10
        while running.is_set() and time.monotonic() < deadline:
            if list(tmp_path.glob("*.txt")):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.002)

    def on_sigint(signum, frame):  # Python's default while the run lasts; ignored after, to spare pytest
        if running.is_set():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        code, out, err = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", FAST, "--concurrency", "2")
    finally:
        running.clear()
        presser.join()
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and "interrupted: run the same command again to resume" in err and "aborted" in err
    for worker in threading.enumerate():  # requests in flight finish in the background, as at a real exit
        if worker.name.startswith("caption"):
            worker.join()
    done = sorted(tmp_path.glob("*.txt"))
    assert 0 < len(done) < 12 and not list(tmp_path.glob(".*"))  # no .partial left behind
    assert all(p.read_text() == expected(p.with_suffix(".png")) for p in done)
    gemini_api.latency = 0
    code, out, _ = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", FAST, "--concurrency", "8")
    assert code == 0 and out.startswith(f"captioned {12 - len(done)}, skipped {len(done)}, failed 0")
    assert [p.with_suffix(".txt").read_text() for p in images] == [expected(p) for p in images]


# --------------------------------------------------------------------------------- dry run, bad input

def test_dry_run_lists_what_would_be_captioned_without_a_key(media, capsys):
    (media / "images" / "a.txt").write_text("done\n")
    code, out, _ = cli(capsys, media, "--anchor", "annika", "--dry-run")
    assert code == 0
    assert out.splitlines()[:5] == ["would caption 3 files with gemini (gemini-3.8-flash):", "  top.jpg  (image)",
                                    "  images/b.webp  (image)", "  videos/clip.mp4  (video)",
                                    "would skip 1 that already have a caption (--overwrite to redo them)"]
    assert "--- prompt sent with each video ---" in out
    assert cli(capsys, media, "--anchor", "annika", "--dry-run", "--overwrite")[1].startswith("would caption 4")


def test_dry_run_imports_no_sdk(media):
    from test_imports import DRIVER, HEAVY

    argv = ["caption", str(media), "--anchor", "annika", "--dry-run"]
    result = subprocess.run([sys.executable, "-c", DRIVER.format(heavy=HEAVY, argv=argv)], capture_output=True,
                            text=True, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stderr.rsplit("LOADED=", 1)[1].strip() == "[]"


def _bad_inputs(tmp: Path) -> list[tuple[list, str]]:
    (tmp / "empty").mkdir()
    (tmp / "clash").mkdir()
    for name in ("a.png", "a.jpg"):
        make_image(tmp / "clash" / name, 1)
    (tmp / "ok").mkdir()
    make_image(tmp / "ok" / "x.png", 1)
    (tmp / "blank.txt").write_text("  \n")
    (tmp / "no-anchor.txt").write_text("Describe the picture.")
    ok = [tmp / "ok", "--anchor", "annika"]
    return [
        ([tmp / "missing", "--anchor", "annika"], "dataset folder .*missing not found"),
        ([tmp / "empty", "--anchor", "annika"], "has no images or videos"),
        ([tmp / "clash", "--anchor", "annika"], "a.jpg and a.png would share the caption a.txt"),
        (ok, "GEMINI_API_KEY is not set"),
        ([*ok, "--provider", "replicate"], "REPLICATE_API_TOKEN is not set"),
        ([*ok, "--provider", "replicate", "--model", "gemini"], "not a Replicate model: write owner/name"),
        ([tmp / "ok", "--anchor", " - "], "--anchor has no letters or digits"),
        ([*ok, "--prompt-file", tmp / "nope.txt"], "prompt file .* not found"),
        ([*ok, "--prompt-file", tmp / "blank.txt"], "is empty"),
        ([*ok, "--prompt-file", tmp / "no-anchor.txt"], "never mentions the anchor"),
        ([*ok, "--concurrency", "0"], "Invalid value for '--concurrency'"),
    ]


def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys):
    import re

    for argv, message in _bad_inputs(tmp_path):
        code, out, err = cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and re.search(message, err), err
        assert "Traceback" not in err and not out


# ------------------------------------------------------------------------------------------------ prompts

def test_builtin_prompts_carry_the_methodology():
    rules = {"character": "never what the character looks like", "style": "Never describe the style itself",
             "motion": "which body parts move", "object": "Do not describe the object's shape"}
    for lora_type in LORA_TYPES:
        image, video = (prompts.builtin_prompt("zorbix", lora_type, kind) for kind in prompts.KINDS)
        for text in (image, video):
            assert rules[lora_type] in text and '"zorbix"' in text and "{" not in text
            assert "camera view" in text and "does not have to come first" in text
        assert "single still image" in image and "over time" in video


def test_anchor_is_matched_as_a_whole_word_in_any_case():
    pattern = prompts.anchor_pattern("crystal  sword")
    assert pattern.search("a Crystal Sword on a table") and pattern.search("the crystal\nsword's edge")
    assert not pattern.search("crystal swords") and not prompts.anchor_pattern("ann").search("annika")


def test_helpers():
    assert set(core.MIME_TYPES) == set(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
    assert prompts.clean_caption(' "Caption: annika\n waving" ') == "annika waving"
    assert [core.parse_retry_after(v) for v in ("3", "0.5", "soon", None)] == [3.0, 0.5, None, None]
    in_ten = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))
    assert 8 <= core.parse_retry_after(in_ten) <= 10
