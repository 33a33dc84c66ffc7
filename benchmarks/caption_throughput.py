"""Captioning throughput of `launcher caption` against a loopback fake Gemini API (tests/fakes/fake_gemini.py).

Every run goes through the real google-genai client and the real GeminiProvider; only the server is fake,
answering each generateContent after a fixed latency (500 ms, times --scale). Five measurements:

1. reference: the one-at-a-time loop of the original script, with its fixed 10 s sleep after each file
   (also times --scale), against the launcher at --concurrency 8 with no binding rate limit. Target >= 8x.
2. concurrency alone: the launcher at concurrency 8 against concurrency 1, no sleeps, at the full 500 ms.
3. rate limit: the launcher at concurrency 8 with an --rpm that binds; the request rate the server saw,
   as a share of the limit. Target >= 90%.
4. faults: 20% of requests answered 429 (with Retry-After) and 5% 500; every file must end with exactly its
   own caption, and the server must have answered exactly one successful request per file.
5. adaptive pace, one run per limit (10, 120 and 2,000 requests a minute) and per way of counting a minute:
   the launcher's own pace (AdaptiveRate, no --rpm, concurrency 32) against a fake whose limit it is not told,
   answering 429 with Retry-After: a token bucket holding a second's worth (RequestLimit, "bucket"), or at most
   that many in any minute (RollingLimit, "rolling"). TIME IS SCALED per limit (ADAPTIVE_RUNS), so that a run
   takes half a minute to three minutes of wall time: the fake counts requests per scaled minute, and the
   latency, the pace's own minute and the retry backoff are scaled alike; every figure is in scaled minutes.
   Reported: the rate the server let through over the second half of the first minute and over all of it; the
   target (>= 90% of the limit) applies to the second half against a bucket (the first half is the climb from
   10 a minute) and to the whole minute against a window (a window's limit is a count per minute: the climb
   cannot see it before the window is full, so the first minute's count comes early in that minute, and the
   window frees no slot before its oldest request is a minute old); the rate over the whole run (target
   >= 90%); the share of requests answered 429 (target <= 5%), and how many came after the first minute;
   captions lost or duplicated (target 0).

    .venv/bin/python benchmarks/caption_throughput.py [--scale 0.1] [--files 64] [--limits 10,120,2000]
        [--windows bucket,rolling]

Exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the fakes live with the tests

from fakes.fake_gemini import FakeGemini, Faults, RequestLimit, RollingLimit, media_tag  # noqa: E402
from PIL import Image  # noqa: E402

from launcher.caption import core, gemini  # noqa: E402

KEY = "bench-key"
LATENCY_S = 0.5  # per generateContent, before --scale
REFERENCE_SLEEP_S = 10.0  # the original script's fixed pause after each Gemini file, before --scale
PROMPT = {"image": "Caption this image of annika."}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1,
                        help="multiplies both the API latency and the reference's sleep (default: %(default)s)")
    parser.add_argument("--files", type=int, default=64, help="files per launcher run (default: %(default)s)")
    parser.add_argument("--reference-files", type=int, default=8, help="files for the reference (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--rpm", type=int, default=1200, help="the binding limit of test 3 (default: %(default)s)")
    parser.add_argument("--limits", default="10,120,2000",
                        help="the fake's limits for test 5, requests a minute (default: %(default)s; empty: skip)")
    parser.add_argument("--windows", default="bucket,rolling",
                        help="how the fake of test 5 counts a minute, each in turn: a token bucket (bucket) "
                             "and a rolling window (rolling) (default: %(default)s)")
    args = parser.parse_args(argv)
    args.windows = [window.strip() for window in args.windows.split(",") if window.strip()]
    if set(args.windows) - {"bucket", "rolling"}:
        parser.error("--windows: name bucket, rolling or both, separated by a comma")
    return args


def make_images(folder: Path, count: int) -> list[core.MediaItem]:
    folder.mkdir(parents=True)
    items = []
    for i in range(count):
        path = folder / f"img{i:04}.png"
        Image.new("RGB", (16, 16), (i % 256, i // 256 % 256, 77)).save(path)
        items.append(core.MediaItem(path, "image", path.name))
    return items


def launcher_run(fake: FakeGemini, items, concurrency: int, rpm: float, scale: float, pace=None) -> float:
    """Captions per second of the launcher's own runner (core.Job + GeminiProvider)."""
    policy = core.RetryPolicy(base_delay=1.0 * scale, max_delay=60.0 * scale)
    caller = core.Caller(policy, pace or core.RateLimiter(rpm))
    provider = gemini.GeminiProvider(api_key=KEY, model="gemini-bench", caller=caller, base_url=fake.base_url)
    job = core.Job(provider, PROMPT, "annika", caller, concurrency=concurrency, hidden=(KEY,))
    start = time.perf_counter()
    summary = job.run(items, core.Summary(), progress=False)
    elapsed = time.perf_counter() - start
    if summary.failed:
        raise SystemExit(f"unexpected failures: {summary.failed[:3]}")
    return len(items) / elapsed


def reference_run(fake: FakeGemini, items, pause: float) -> float:
    """The original script's loop: one file at a time, then a fixed pause (none after the last file)."""
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=fake.base_url))
    start = time.perf_counter()
    for index, item in enumerate(items):
        part = types.Part.from_bytes(data=item.path.read_bytes(), mime_type="image/png")
        text = client.models.generate_content(model="gemini-bench", contents=[part, PROMPT["image"]]).text
        item.caption_path.write_text(text.strip() + "\n", encoding="utf-8")
        if index < len(items) - 1:
            time.sleep(pause)
    return len(items) / (time.perf_counter() - start)


def server_rate(fake: FakeGemini, since: int) -> float:
    """Requests per second between the first and the last generateContent the server answered."""
    stamps = fake.answered_at[since:]
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def check_no_loss(items) -> list[str]:
    problems = []
    for item in items:
        want = f"[{media_tag(item.path.read_bytes())}]"
        if not item.caption_path.is_file():
            problems.append(f"{item.shown}: no caption")
        elif not item.caption_path.read_text().rstrip().endswith(want):
            problems.append(f"{item.shown}: someone else's caption")
    return problems


UNLIMITED = 1_000_000  # an --rpm that never binds


def measure_reference(fake, tmp: Path, args, pause: float) -> tuple[tuple, bool]:
    reference = reference_run(fake, make_images(tmp / "ref", args.reference_files), pause)
    ours = launcher_run(fake, make_images(tmp / "ours", args.files), args.concurrency, UNLIMITED, args.scale)
    return ("1. vs reference (one at a time, fixed sleep)", f"{reference:.2f} → {ours:.1f} captions/s",
            f"{ours / reference:.0f}× (target ≥ 8×)"), ours / reference >= 8


def measure_concurrency(fake, tmp: Path, args) -> tuple[tuple, bool]:
    fake.latency = LATENCY_S  # unscaled: a real Flash call takes about this long
    one = launcher_run(fake, make_images(tmp / "c1", args.concurrency), 1, UNLIMITED, args.scale)
    many = launcher_run(fake, make_images(tmp / "c8", args.concurrency * 8), args.concurrency, UNLIMITED, args.scale)
    fake.latency = LATENCY_S * args.scale
    return (f"2. concurrency {args.concurrency} vs 1, 500 ms latency, no sleeps", f"{one:.2f} → {many:.2f} captions/s",
            f"{many / one:.1f}× (ceiling {args.concurrency}×)"), True  # informative: no target


def measure_rate_limit(fake, tmp: Path, args) -> tuple[tuple, bool]:
    since = len(fake.answered_at)
    captions = launcher_run(fake, make_images(tmp / "rpm", args.files), args.concurrency, args.rpm, args.scale)
    requests = server_rate(fake, since)
    share = requests / (args.rpm / 60)
    return (f"3. --rpm {args.rpm} binding ({args.rpm / 60:.0f}/s)",
            f"{requests:.2f} requests/s, {captions:.2f} captions/s",
            f"{share:.0%} of the limit (target ≥ 90%)"), share >= 0.9


def measure_faults(fake, tmp: Path, args) -> tuple[tuple, bool]:
    fake.faults = Faults(rate_429=0.2, rate_500=0.05, retry_after=f"{1.0 * args.scale:g}", seed=1)
    since, sent = len(fake.answered_at), fake.count("POST", "generateContent")
    items = make_images(tmp / "faults", args.files)
    captions = launcher_run(fake, items, args.concurrency, UNLIMITED, args.scale)
    problems = check_no_loss(items)
    duplicated = len(fake.answered_at) - since - len(items)
    requests = fake.count("POST", "generateContent") - sent
    return ("4. 20% 429 + 5% 500 injected", f"{requests} requests for {len(items)} files, {captions:.1f} captions/s",
            f"{len(problems)} lost or wrong, {duplicated} duplicated"), not problems and duplicated == 0


# (limit a minute, time scale, minutes of work): about 3 to 67 requests a second of wall time, which two
# shared CPU cores serve through the real client without becoming the bottleneck (unless other jobs load them).
# Ten minutes at 10 and 120 a minute: a run's 429s come at its start (the climb; against a window, the requests
# in flight when it first fills, up to the 32 workers), and a few minutes' files would make those the figure.
ADAPTIVE_RUNS = {10: (0.05, 10), 120: (0.1, 10), 2000: (0.5, 5)}


def measure_adaptive(tmp: Path, limit: int, window: str = "bucket") -> tuple[tuple, bool]:
    scale, minutes = ADAPTIVE_RUNS.get(limit, (min(1.0, limit / 2000), 3))
    minute = 60.0 * scale
    quota = (RollingLimit if window == "rolling" else RequestLimit)(limit, minute=minute)
    items = make_images(tmp / f"{window}{limit}", limit * minutes)
    pace = core.AdaptiveRate(ceiling=UNLIMITED, minute=minute)
    refused_in_minute_1 = threading.Timer(minute, lambda: setattr(quota, "in_minute_1", quota.refused))
    with FakeGemini(api_key=KEY, latency=LATENCY_S * scale, limit=quota) as fake:
        start = time.perf_counter()
        refused_in_minute_1.start()
        launcher_run(fake, items, 32, UNLIMITED, scale, pace)
        stamps = [t - start for t in fake.answered_at]
        sent = fake.count("POST", "generateContent")
    problems, duplicated = check_no_loss(items), len(stamps) - len(items)
    second_half = 2 * sum(minute / 2 <= t < minute for t in stamps) / limit
    first = sum(t < minute for t in stamps) / limit
    reached = first if window == "rolling" else second_half  # why: the module's docstring, test 5
    whole = (len(stamps) - 1) / (stamps[-1] - stamps[0]) * minute / limit
    refused = quota.refused / sent
    ok = reached >= 0.9 and whole >= 0.9 and refused <= 0.05 and not problems and duplicated == 0
    target = "whole minute" if window == "rolling" else "second half"
    return (f"5. adaptive, limit {limit}/min, {window} ({len(items)} files, time × {scale:g})",
            f"minute 1: second half {second_half:.0%}, whole minute {first:.0%} (target on the {target}); "
            f"whole run {whole:.0%}; settled at {pace.rate:.0f}/min",
            f"{quota.refused} of {sent} answered 429 ({refused:.1%}), "
            f"{quota.refused - getattr(quota, 'in_minute_1', quota.refused)} after minute 1; "
            f"{len(problems)} lost or wrong, "
            f"{duplicated} duplicated"), ok


def main(argv=None) -> int:
    args = parse_args(argv)
    latency, pause = LATENCY_S * args.scale, REFERENCE_SLEEP_S * args.scale
    with tempfile.TemporaryDirectory() as tmp, FakeGemini(api_key=KEY, latency=latency) as fake:
        tmp = Path(tmp)
        measured = [measure_reference(fake, tmp, args, pause), measure_concurrency(fake, tmp, args),
                    measure_rate_limit(fake, tmp, args), measure_faults(fake, tmp, args)]
        limits = [int(limit) for limit in args.limits.split(",") if limit.strip()]
        measured += [measure_adaptive(tmp, limit, window) for window in args.windows for limit in limits]
    print(f"scale {args.scale:g}: latency {latency * 1000:.0f} ms, reference sleep {pause:g} s; "
          f"concurrency {args.concurrency}, {args.files} files per run\n")
    print("| measurement | throughput | result |\n|---|---|---|")
    for row, _ in measured:
        print("| " + " | ".join(row) + " |")
    return 0 if all(ok for _, ok in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
