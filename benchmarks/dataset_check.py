"""Time `launcher dataset check` on images, in files per second.

Generates --files small images (half PNG, half JPEG, each with a caption) in a temporary folder, then times
(1) `probe_image` over all of them, the header read, (2) `decode_image`, the full decode the check does by
default, (3) the whole `check_dataset --headers-only` and (4) the whole default check, which add scan_dataset's
caption checks and content hashing, buckets and the report. Best of --runs. Exits 1 if the probe rate is below
--min-rate.

    .venv/bin/python benchmarks/dataset_check.py [--files 2000] [--size 256x192] [--runs 3] [--min-rate 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from launcher.core.presets import load_preset
from launcher.media.check import check_dataset
from launcher.media.probe import decode_image, probe_image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="images to generate (default: %(default)s)")
    parser.add_argument("--size", default="256x192", help="WIDTHxHEIGHT of each image (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs, best kept (default: %(default)s)")
    parser.add_argument("--min-rate", type=float, default=1000.0,
                        help="fail if the probe handles fewer files per second (default: %(default)s)")
    parser.add_argument("--preset", default="wan21-t2v-14b", help="preset of the full check (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.files < 1 or args.runs < 1:
        parser.error("--files and --runs must be at least 1")
    return args


def make_images(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """Noise images (so the encoders do real work), alternating PNG and JPEG, each with a caption."""
    folder.mkdir(parents=True)
    noise = Image.effect_noise(size, 64).convert("RGB")
    paths = []
    for i in range(count):
        path = folder / f"img_{i:05d}.{'png' if i % 2 else 'jpg'}"
        noise.rotate(i % 360).save(path)
        path.with_suffix(".txt").write_text(f"a test image number {i}", encoding="utf-8")
        paths.append(path)
    return paths


def best_seconds(action, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    width, height = (int(side) for side in args.size.lower().split("x"))
    preset = load_preset(args.preset).preset
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dataset"
        paths = make_images(root / "images", args.files, (width, height))
        probes = best_seconds(lambda: [probe_image(p) for p in paths], args.runs)
        decodes = best_seconds(lambda: [decode_image(p) for p in paths], args.runs)
        report = check_dataset(root, preset)
        assert not report.errors and report.decoded["images"] == args.files, report.errors
        headers = best_seconds(lambda: check_dataset(root, preset, decode=False), args.runs)
        full = best_seconds(lambda: check_dataset(root, preset), args.runs)
    rate = args.files / probes
    print(f"{args.files} images ({args.size}, PNG and JPEG), best of {args.runs} runs")
    for name, seconds in (("header probe (probe_image)", probes), ("full decode (decode_image)", decodes),
                          ("check --headers-only", headers), ("check (decodes every image)", full)):
        print(f"{name:<29}{args.files / seconds:8.0f} files/s  ({seconds:.3f} s)")
    verdict = "ok" if rate >= args.min_rate else "FAIL"
    print(f"probe rate {rate:.0f} files/s (min {args.min_rate:g}) {verdict}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
