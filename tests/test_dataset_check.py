"""`launcher dataset check|prepare` and the media check of `launcher run`: probing, musubi's buckets, frame
windows and steps, the report, exit codes, and the 16 fps / 4N+1 copy. All media are made here, small."""

from __future__ import annotations

import os
from pathlib import Path

import av
import pytest
from conftest import EXAMPLE_DATASET
from PIL import Image

from launcher.cli.main import main
from launcher.core.presets import load_preset
from launcher.media.buckets import (
    Buckets,
    batches,
    extraction_windows,
    latent_tokens,
    selector_for,
    step_seconds,
    steps_per_epoch,
)
from launcher.media.check import check_dataset
from launcher.media.prepare import resample_schedule
from launcher.media.probe import probe_image, probe_video

# --- making media ------------------------------------------------------------------------------------


def write_image(path: Path, size=(64, 48), caption: str | None = "a test image") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 40, 40)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def write_video(path: Path, frames: int, fps: int, size=(64, 48), caption: str | None = "a test clip") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            picture = Image.new("RGB", size, (i * 9 % 256, 80, 160))
            container.mux(stream.encode(av.VideoFrame.from_image(picture)))
        container.mux(stream.encode())
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- musubi's buckets, windows and steps ---------------------------------------------------------------


def test_buckets_keep_the_area_in_16_pixel_steps_both_orientations():
    sizes = Buckets((1280, 720)).sizes
    assert (1280, 720) in sizes and (720, 1280) in sizes and (960, 960) in sizes
    assert all(w % 16 == 0 and h % 16 == 0 and w * h <= 1280 * 720 for w, h in sizes)
    assert all((h, w) in sizes for w, h in sizes)


@pytest.mark.parametrize("size, flags, bucket", [
    ((1920, 1080), (True, False), (1280, 720)),  # same aspect ratio, scaled down to the area
    ((1080, 1920), (True, False), (720, 1280)),
    ((1000, 1000), (True, False), (960, 960)),
    ((300, 200), (True, False), (1168, 784)),  # upscaled to the area, at the closest ratio to 1.5
    ((300, 200), (True, True), (288, 192)),  # bucket_no_upscale: own size, rounded down to 16s
    ((3000, 2000), (True, True), (1168, 784)),  # larger than the area: bucketed anyway
    ((300, 200), (False, True), (1280, 720)),  # no buckets: one size, and no_upscale is ignored
])
def test_bucket_selection_matches_musubi(size, flags, bucket):
    assert Buckets((1280, 720), *flags).select(size) == bucket


def test_videos_are_cached_in_area_filling_buckets_whatever_the_flags():
    assert selector_for((1280, 720), "video", False, True).select((256, 144)) == (1280, 720)
    assert selector_for((1280, 720), "image", True, True).select((256, 144)) == (256, 144)


@pytest.mark.parametrize("frames, targets, mode, options, windows", [
    (33, [21], "head", {}, [(0, 21)]),
    (17, [21], "head", {}, []),
    (33, [21, 45], "head", {}, [(0, 21)]),
    (30, [9], "chunk", {}, [(0, 9), (9, 9), (18, 9)]),
    (30, [9], "slide", {"frame_stride": 10}, [(0, 9), (10, 9), (20, 9)]),
    (41, [21], "uniform", {"frame_sample": 3}, [(0, 21), (10, 21), (20, 21)]),
    (22, [21], "uniform", {"frame_sample": 4}, [(0, 21), (1, 21)]),  # equal starts cache (and train) once
    (49, [45], "uniform", {"frame_sample": 1}, [(0, 45)]),  # musubi turns uniform with 1 sample into head
    (50, [1], "full", {}, [(0, 49)]),  # rounded down to 4N+1
    (50, [1], "full", {"max_frames": 20}, [(0, 17)]),
])
def test_extraction_windows_match_musubi(frames, targets, mode, options, windows):
    assert extraction_windows(frames, targets, mode, **options) == windows


def test_steps_batch_each_bucket_then_accumulate():
    assert batches({"a": 3, "b": 1}, num_repeats=2, batch_size=2) == 3 + 1
    assert steps_per_epoch([4, 3], gradient_accumulation_steps=3) == 3
    assert latent_tokens(1280, 720, 21) == 6 * 80 * 45


def test_step_time_estimate_grows_with_tokens_and_slower_gpus():
    times = [step_seconds("14B", t, 80) for t in (100, 3_600, 21_600, 75_600, 150_000)]
    assert times == sorted(times) and times[1] == pytest.approx(2.0)
    assert step_seconds("1.3B", 21_600, 80) < step_seconds("14B", 21_600, 80) < step_seconds("14B", 21_600, 24)


def test_resample_schedule_picks_the_frame_on_screen_every_sixteenth_second():
    assert resample_schedule([i / 16 for i in range(49)]) == list(range(49))
    assert resample_schedule([i / 24 for i in range(10)]) == [0, 1, 3, 4, 6]  # 7 moments, trimmed to 4N+1
    assert resample_schedule([i / 8 for i in range(5)]) == [0, 0, 1, 1, 2, 2, 3, 3, 4]


# --- probing ---------------------------------------------------------------------------------------------


def test_image_probe_reads_the_header_only(tmp_path):
    image = write_image(tmp_path / "big.png", size=(1920, 1080), caption=None)
    image.write_bytes(image.read_bytes()[:200])  # the pixels are gone; the header says the size
    assert probe_image(image).size == (1920, 1080) and probe_image(image).error is None


def test_video_probe_reads_frames_fps_and_duration(tmp_path):
    probed = probe_video(write_video(tmp_path / "clip.mp4", frames=10, fps=24))
    assert (probed.size, probed.frames, probed.fps) == ((64, 48), 10, 24.0)
    assert probed.duration == pytest.approx(10 / 24, abs=0.01)


def test_random_bytes_are_an_error_not_a_crash(tmp_path):
    for name in ("bad.png", "bad.mp4"):
        (tmp_path / name).write_bytes(os.urandom(2048))
    assert "cannot be opened as an image" in probe_image(tmp_path / "bad.png").error
    assert "cannot be opened as a video" in probe_video(tmp_path / "bad.mp4").error
    assert str(tmp_path) not in probe_image(tmp_path / "bad.png").error  # the report shows relative paths


# --- the report --------------------------------------------------------------------------------------------


def test_report_counts_buckets_items_and_steps(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "images" / "a.png", size=(832, 480))
    write_image(root / "images" / "b.png", size=(832, 480))
    write_image(root / "images" / "c.png", size=(480, 832))
    write_video(root / "videos" / "clip.mp4", frames=25, fps=16, size=(64, 36))
    preset = load_preset("wan21-t2v-1.3b", ["dataset.batch_size=2", "train.gradient_accumulation_steps=2",
                                            "dataset.images.num_repeats=3", "train.max_train_epochs=4"]).preset
    report = check_dataset(root, preset)
    images, head, uniform = report.entries
    assert images.items == {(832, 480, 1): 2, (480, 832, 1): 1} and images.batches == 3 + 2
    assert head.items == {(832, 480, 21): 1} and head.batches == 1
    assert not uniform.items  # 25 frames are too few for 45
    assert report.steps_per_epoch == 3 and report.total_steps == 12  # ceil(6 batches / 2 accumulated) x 4
    assert [p.level for p in report.problems] == ["warning"] and "uniform (needs 45)" in report.problems[0].message
    assert report.seconds > 0


def test_example_dataset_passes_with_a_summary(capsys):
    code, out, err = cli(capsys, "dataset", "check", str(EXAMPLE_DATASET), "--preset", "wan21-t2v-14b")
    assert code == 0, err
    assert "4 images, 2 videos" in out and "steps per epoch  8" in out and "total steps      400" in out
    assert "estimated time" in out and "1280x720x21f" in out


def test_wan22_figures_are_per_expert_unless_both(capsys):
    _, out, _ = cli(capsys, "dataset", "check", str(EXAMPLE_DATASET), "--preset", "wan22-t2v-lightning")
    assert "400 (50 epochs) per expert" in out
    _, out, _ = cli(capsys, "dataset", "check", str(EXAMPLE_DATASET), "--preset", "wan22-t2v-lightning",
                    "--expert", "both")
    assert "for each of the 2 experts" in out


def test_every_problem_is_reported_at_once_and_errors_exit_2(dataset, capsys):
    (dataset / "images" / "broken.png").write_bytes(os.urandom(4096))
    (dataset / "images" / "broken.txt").write_text("a broken image", encoding="utf-8")
    (dataset / "videos" / "broken.mp4").write_bytes(os.urandom(4096))
    (dataset / "videos" / "broken.txt").write_text("a broken clip", encoding="utf-8")
    (dataset / "images" / "zorbix_beach_wave.txt").write_bytes("caf\xe9".encode("latin-1"))
    write_video(dataset / "videos" / "fast.mp4", frames=10, fps=24)
    code, out, err = cli(capsys, "dataset", "check", str(dataset), "--preset", "wan21-t2v-14b")
    assert code == 2
    assert err.count("error: ") == 1 and "4 errors" in err and "Traceback" not in err
    problems = out.split("problems", 1)[1]
    for words in ("images/broken.png cannot be opened as an image", "videos/broken.mp4 cannot be opened as a video",
                  "images/zorbix_beach_wave.txt is not UTF-8", "videos/fast.mp4 has 10 frames, too few for every",
                  "videos/fast.mp4 is 24 fps", "1.5x slower"):
        assert words in problems, words


def test_bad_input_is_one_error_line(tmp_path, capsys):
    code, out, err = cli(capsys, "dataset", "check", str(tmp_path / "absent"), "--preset", "wan21-t2v-14b")
    assert code == 2 and out == "" and err.count("\n") == 1 and "not found" in err
    code, _, err = cli(capsys, "dataset", "check", str(EXAMPLE_DATASET), "--preset", "wan21-t2v-14x")
    assert code == 2 and "unknown preset" in err


def test_missing_media_libraries_are_one_error_line(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a))
    code, out, err = cli(capsys, "dataset", "check", str(EXAMPLE_DATASET), "--preset", "wan21-t2v-14b")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: checking media needs PyAV, not installed: ") and "install -e '" in err
    assert err.endswith("[dataset]'\n")


# --- `launcher run` --------------------------------------------------------------------------------------


class FakeBackend:
    launched: list = []

    def launch(self, job, options) -> int:
        self.launched.append(options.dataset)
        return 0

    def dry_run(self, job, options) -> str:
        return "fake launch"


@pytest.fixture
def fake_backend(monkeypatch):
    import launcher.backends

    FakeBackend.launched = []
    monkeypatch.setattr(launcher.backends, "load_backend", lambda name: FakeBackend())
    return FakeBackend


def test_run_checks_media_before_launching_and_no_check_skips_it(dataset, capsys, fake_backend):
    (dataset / "videos" / "broken.mp4").write_bytes(os.urandom(4096))
    (dataset / "videos" / "broken.txt").write_text("a broken clip", encoding="utf-8")
    run = ["run", "--preset", "wan21-t2v-14b", "--dataset", str(dataset), "--backend", "local"]
    code, _, err = cli(capsys, *run)
    assert code == 2 and err.count("error: ") == 1 and "videos/broken.mp4 cannot be opened as a video" in err
    assert fake_backend.launched == []
    code, _, err = cli(capsys, *run, "--no-check")
    assert code == 0 and "broken.mp4" not in err and fake_backend.launched == [str(dataset)]
    # Planning reads no media (so it needs neither Pillow nor PyAV): `dataset check` is the full check.
    code, out, _ = cli(capsys, *run[:-2], "--dry-run")
    assert code == 0 and "wan_train_network.py" in out


def test_run_prints_the_warnings_and_launches(capsys, fake_backend):
    code, _, err = cli(capsys, "run", "--preset", "wan21-t2v-14b", "--dataset", str(EXAMPLE_DATASET),
                       "--backend", "local")
    assert code == 0 and fake_backend.launched == [str(EXAMPLE_DATASET)]
    assert err.startswith("warning: videos/zorbix_desert_hop.mp4 has 33 frames, too few for entry uniform")


# --- `launcher dataset prepare` ------------------------------------------------------------------------------


def test_prepare_writes_16_fps_4n_plus_1_clips_into_a_new_folder(tmp_path, capsys):
    source, target = tmp_path / "src", tmp_path / "out"
    write_video(source / "videos" / "fast.mp4", frames=10, fps=24)
    write_video(source / "videos" / "slow.mp4", frames=7, fps=12)
    write_video(source / "videos" / "ready.mp4", frames=9, fps=16)
    write_image(source / "images" / "still.png")
    before = snapshot(source)
    code, out, err = cli(capsys, "dataset", "prepare", str(source), str(target))
    assert code == 0, err
    assert "2 resampled" in out
    for name, frames in (("fast", 5), ("slow", 9), ("ready", 9)):
        clip = target / "videos" / f"{name}.mp4"
        assert decoded_frames(clip) == frames and probe_video(clip).fps == 16, name
        assert (frames - 1) % 4 == 0
    assert (target / "videos" / "ready.mp4").read_bytes() == before["videos/ready.mp4"]  # right already: copied
    assert snapshot(target)["images/still.png"] == before["images/still.png"]
    assert {p for p in snapshot(target) if p.endswith(".txt")} == {p for p in before if p.endswith(".txt")}
    assert snapshot(source) == before


def test_prepare_never_writes_over_or_into_the_source(tmp_path, capsys):
    source = tmp_path / "src"
    write_image(source / "still.png")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    for target, words in ((tmp_path / "taken", "already exists"), (source / "inside", "inside")):
        code, out, err = cli(capsys, "dataset", "prepare", str(source), str(target))
        assert code == 2 and words in err and err.count("\n") == 1
    assert snapshot(tmp_path) == before
