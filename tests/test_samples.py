"""Sample videos as a plan step: epochs, prompts, argv per Wan version and expert, and the run-time behaviour
(videos named by prompt, listed with sha256; a failing sample step never fails the run)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from conftest import EXAMPLE_DATASET
from test_entrypoint import Container
from test_golden import combinations

from launcher import contract
from launcher.core.checks import plan_problems, split_script
from launcher.core.dataset import scan_dataset
from launcher.core.errors import UserError
from launcher.core.plan import make_plan
from launcher.core.presets import load_preset
from launcher.core.samples import parse_samples_file, sampled_epochs
from launcher.core.schema import EXPERTS


def plan_of(name, expert=None, *overrides, dataset=EXAMPLE_DATASET):
    return make_plan(load_preset(name, overrides).preset, expert, scan_dataset(dataset), "r")


def sample_steps(plan):
    return [s for s in plan.steps if s.name.startswith("samples-")]


def arg(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


@pytest.mark.parametrize("name, expert", [*combinations(), ("wan22-t2v-lightning", "both"),
                                          ("wan22-i2v-vanilla", "both")])
def test_every_training_samples_through_the_contract_and_can_be_turned_off(name, expert):
    plan = plan_of(name, expert)
    steps = sample_steps(plan)
    assert [s.name for s in steps] == [f"samples-e{e:06d}" for e in (10, 20, 30, 40, 50)]
    for step in steps:
        _, script, args = split_script(step.argv)
        assert script == "wan_generate_video" and contract.check_args(script, args) == []
    train_at = max(i for i, s in enumerate(plan.steps) if s.name.startswith("train"))
    assert all(plan.steps.index(s) > train_at for s in steps)  # never before a LoRA is written
    off = plan_of(name, expert, "samples.enabled=false")
    assert sample_steps(off) == [] and off.samples is None
    assert [s.name for s in off.steps] == [s.name for s in plan.steps[:train_at + 1]]


@pytest.mark.parametrize("epochs, every_saved, every, expected", [
    (50, 5, 2, [10, 20, 30, 40, 50]),
    (50, 5, 1, [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]),
    (20, 6, 2, [12, 20]),  # saves 6, 12, 18 and the last (20)
    (10, 5, 3, [10]),
    (7, 10, 1, [7]),  # no intermediate save: the last only
])
def test_sampled_epochs_are_every_nth_save_plus_the_last(epochs, every_saved, every, expected):
    assert sampled_epochs(epochs, every_saved, every) == expected


def test_wan22_pairs_both_experts_loras_epoch_by_epoch():
    plan = plan_of("wan22-t2v-vanilla", "both")
    for step, epoch in zip(sample_steps(plan), (10, 20, 30, 40, 50), strict=True):
        argv = list(step.argv)
        suffix = f"-{epoch:06d}" if epoch < 50 else ""
        assert arg(argv, "--lora_weight") == f"/output/r/wan22-t2v-vanilla-low{suffix}.safetensors"
        assert arg(argv, "--lora_weight_high_noise") == f"/output/r/wan22-t2v-vanilla-high{suffix}.safetensors"
        assert arg(argv, "--dit").endswith("low_noise_14B_fp16.safetensors")
        assert arg(argv, "--dit_high_noise").endswith("high_noise_14B_fp16.safetensors")
        assert "--infer_steps" not in argv  # vanilla: musubi's own defaults for the task


@pytest.mark.parametrize("expert", EXPERTS)
def test_one_expert_alone_samples_with_the_other_experts_base(expert):
    plan = plan_of("wan22-t2v-vanilla", expert)
    argv = list(sample_steps(plan)[0].argv)
    other = {"high": "low", "low": "high"}[expert]
    mine, theirs = ("--lora_weight_high_noise", "--lora_weight") if expert == "high" else (
        "--lora_weight", "--lora_weight_high_noise")
    assert arg(argv, mine).endswith(f"-{expert}-000010.safetensors") and theirs not in argv
    assert f"{other}-noise expert's base weights" in plan.samples.note


def test_lightning_alone_merges_the_other_expert_after_training_with_four_steps():
    plan = plan_of("wan22-t2v-lightning", "high")
    names = [s.name for s in plan.steps]
    assert names.index("merge-lightning-low") > names.index("train-high")
    assert plan.samples.steps[0] == "merge-lightning-low"
    argv = list(sample_steps(plan)[0].argv)
    merged_low = next(s for s in plan.steps if s.name == "merge-lightning-low").argv
    assert arg(argv, "--dit") == arg(list(merged_low), "--output")
    assert (arg(argv, "--infer_steps"), arg(argv, "--guidance_scale"), arg(argv, "--guidance_scale_high_noise")) == (
        "4", "1.0", "1.0")
    assert "with its Lightning LoRA merged" in plan.samples.note


def test_wan21_i2v_samples_from_dataset_images_with_clip():
    plan = plan_of("wan21-i2v-480p")
    argv = list(sample_steps(plan)[-1].argv)
    assert arg(argv, "--lora_weight") == "/output/r/wan21-i2v-480p.safetensors" and "--dit_high_noise" not in argv
    assert arg(argv, "--clip") and arg(argv, "--video_size") == "480"
    assert all(p.image and p.image.startswith("/dataset/images/") for p in plan.samples.prompts)
    assert all(f" --i {p.image}" in plan.samples.prompts_file for p in plan.samples.prompts)


def test_default_prompts_are_two_captions_of_both_kinds_chosen_the_same_way_each_time():
    first, again = plan_of("wan21-t2v-14b").samples, plan_of("wan21-t2v-14b").samples
    assert first.prompts == again.prompts and len(first.prompts) == 2
    sources = [p.source for p in first.prompts]
    assert sources[0].startswith("caption:images/") and sources[1].startswith("caption:videos/")
    caption = (EXAMPLE_DATASET / sources[1].removeprefix("caption:")).with_suffix(".txt").read_text().strip()
    assert first.prompts[1].text == " ".join(caption.split())
    assert [p.seed for p in first.prompts] == [42, 43]


def test_an_i2v_dataset_without_images_plans_no_sample_and_says_why(tmp_path):
    import shutil

    shutil.copytree(EXAMPLE_DATASET / "videos", tmp_path / "videos")
    plan = plan_of("wan21-i2v-480p", None, dataset=tmp_path)
    assert sample_steps(plan) == [] and "the dataset has none" in plan.samples.note
    with_image = plan_of("wan21-t2v-1.3b", None, "samples.captions=0")
    assert sample_steps(with_image) == [] and "samples.captions=0" in with_image.samples.note


def test_captions_cannot_smuggle_options_into_the_prompt_file(dataset):
    (dataset / "images" / "zorbix_beach_wave.txt").write_text("# zorbix waves --f 9 --d 1 ---\n")
    plan = plan_of("wan21-t2v-14b", None, dataset=dataset)
    assert plan.samples.prompts[0].text == "zorbix waves -f 9 -d 1 -"
    assert plan.samples.prompts_file.splitlines()[0].count(" --") == 4  # --w --h --f --d of our own


def test_given_prompts_add_to_the_captions_with_their_own_frames_and_seed():
    prompts = '[{"text": "zorbix on the moon", "frames": 49, "seed": 7}]'
    plan = plan_of("wan21-t2v-1.3b", None, f"samples.prompts={prompts}")
    assert [p.seed for p in plan.samples.prompts] == [42, 43, 7]
    assert plan.samples.prompts_file.splitlines()[2] == "zorbix on the moon --w 832 --h 480 --f 49 --d 7"


@pytest.mark.parametrize("name, prompts, message", [
    ("wan22-i2v-vanilla", '[{"text": "x"}]', "starts every video from an image"),
    ("wan22-i2v-vanilla", '[{"text": "x", "image": "nope.png"}]', "is not an image of the dataset"),
    ("wan21-t2v-14b", '[{"text": "x", "image": "images/zorbix_beach_wave.png"}]', "takes no start image"),
    ("wan21-t2v-14b", '[{"text": "x", "seed": 42}]', "seed 42 is used by another sample prompt"),
])
def test_unusable_sample_prompts_are_user_errors(name, prompts, message):
    expert = "high" if name.startswith("wan22") else None
    with pytest.raises(UserError, match=message):
        plan_of(name, expert, f"samples.prompts={prompts}")


@pytest.mark.parametrize("setting, message", [
    ("samples.frames=34", r"not 4N\+1"), ("samples.width=830", "multiple of 16"), ("samples.every=0", "greater than 0"),
    ('samples.prompts=[{"text": "a --f 3"}]', "musubi's prompt file syntax"), ("samples.colour=red", "colour")])
def test_samples_settings_are_schema_checked(setting, message):
    with pytest.raises(UserError, match=message):
        load_preset("wan21-t2v-14b", [setting])


def test_a_broken_sample_argv_breaks_the_plan_rules():
    plan = plan_of("wan22-t2v-vanilla", "both")
    step = sample_steps(plan)[0]
    cut = list(step.argv)
    del cut[cut.index("--dit_high_noise"):cut.index("--dit_high_noise") + 2]
    broken = dataclasses.replace(plan, steps=(*plan.steps[:-1], dataclasses.replace(step, argv=tuple(cut))))
    assert any("--dit_high_noise" in p for p in plan_problems(broken, load_preset("wan22-t2v-vanilla").preset))
    assert plan_problems(plan, load_preset("wan22-t2v-vanilla").preset) == []


def test_samples_file_lines_mirror_musubis_prompt_options():
    text = "# mine\nzorbix runs --f 49 --d 5\n\nzorbix sits --i images/zorbix_beach_wave.png\n"
    assert parse_samples_file(text, "p.txt") == [{"text": "zorbix runs", "frames": 49, "seed": 5},
                                                 {"text": "zorbix sits", "image": "images/zorbix_beach_wave.png"}]
    for bad, message in (("x --w 3", "--w is the same for every prompt: .* --set samples.width=3"),
                         ("x --n ugly", "--n is not a sample option"), ("x --f many", "whole number"),
                         ("#", "no prompt")):
        with pytest.raises(UserError, match=message):
            parse_samples_file(bad, "p.txt")


def launcher(*args):
    return subprocess.run([sys.executable, "-m", "launcher.cli.main", *args], capture_output=True, text=True)


def test_cli_samples_file_adds_prompts_and_bad_ones_are_one_error_line(tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("zorbix juggles --d 99\n")
    bad.write_text("zorbix --f 34\n")
    base = ["run", "--preset", "wan21-t2v-1.3b", "--dataset", str(EXAMPLE_DATASET), "--dry-run"]
    result = launcher(*base, "--samples", str(good), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["samples"]["prompts"][-1]["text"] == "zorbix juggles"
    for path, message in ((bad, "34 frames is not 4N+1"), (tmp_path / "none.txt", "none.txt not found"),
                          (tmp_path, "is a directory")):
        result = launcher(*base, "--samples", str(path))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error:") and message in result.stderr and "Traceback" not in result.stderr
    shown = launcher(*base, "--set", "samples.enabled=false")
    assert "Samples: off" in shown.stdout and "samples-e" not in shown.stdout


# --- in the (fake) container ---------------------------------------------------------------------------

def frames_of(path) -> int:
    import av

    with av.open(str(path)) as video:
        return sum(1 for _ in video.decode(video=0))


def test_wan22_run_samples_both_loras_and_lists_the_videos(tmp_path, dataset):
    box = Container(tmp_path, dataset)
    box.stock_weights("wan22-t2v-vanilla", "both")
    result = box.run(box.env("wan22-t2v-vanilla", "both", LORA_GYM_SET="samples.every=5 train.max_train_epochs=10"))
    assert result.returncode == 0, result.stderr + result.stdout
    [run_dir] = box.runs()
    manifest = json.loads((run_dir / "run.json").read_text())
    record = manifest["samples"]
    assert record["status"] == "succeeded" and record["epochs"] == [10]
    assert [v["path"] for v in record["videos"]] == ["samples/e000010/prompt-1.mp4", "samples/e000010/prompt-2.mp4"]
    for video in record["videos"]:
        from launcher.core.dataset import file_sha256

        assert file_sha256(run_dir / video["path"]) == video["sha256"]
        assert frames_of(run_dir / video["path"]) == 33
    [call] = [c for c in box.calls() if c["script"] == "wan_generate_video"]
    assert arg(call["argv"], "--lora_weight").endswith("wan22-t2v-vanilla-low.safetensors")
    assert arg(call["argv"], "--lora_weight_high_noise").endswith("wan22-t2v-vanilla-high.safetensors")


def test_a_failing_sample_step_is_reported_but_the_loras_count_as_done(tmp_path, dataset):
    box = Container(tmp_path, dataset)
    box.stock_weights("wan21-t2v-14b")
    result = box.run(box.env("wan21-t2v-14b", FAKE_MUSUBI_FAIL="wan_generate_video"))
    assert result.returncode == 0, result.stderr + result.stdout
    manifest = json.loads((box.runs()[0] / "run.json").read_text())
    assert manifest["status"] == "succeeded" and "wan21-t2v-14b.safetensors" in {o["path"] for o in
                                                                                   manifest["outputs"]}
    record = manifest["samples"]
    assert record["status"] == "failed" and record["failed_step"] == "samples-e000010" and record["exit_code"] == 3
    statuses = [s["status"] for s in manifest["steps"] if s["name"].startswith("samples-")]
    assert statuses == ["failed"] + ["skipped"] * 4
    assert [c["script"] for c in box.calls()].count("wan_generate_video") == 1


def test_a_stop_during_the_samples_leaves_a_succeeded_run(tmp_path, dataset):
    import signal
    import time

    box = Container(tmp_path, dataset)
    box.stock_weights("wan21-t2v-14b")
    env = box.env("wan21-t2v-14b", FAKE_MUSUBI_HANG="wan_generate_video")
    proc = subprocess.Popen([sys.executable, "-m", "lora_gym_entrypoint"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not proc.stdout.readline().strip().endswith("ready"):
        pass
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    manifest = json.loads((box.runs()[0] / "run.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["samples"]["status"] == "stopped"
    assert [c["script"] for c in box.calls()].count("wan_generate_video") == 1  # no further sample started
    assert "the run counts as succeeded" in rest


def test_a_continued_run_does_not_sample_an_epoch_twice(tmp_path, dataset):
    box = Container(tmp_path, dataset)
    box.stock_weights("wan21-t2v-1.3b")
    env = box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="r", LORA_GYM_SET="train.max_train_epochs=20")
    assert box.run(env | {"FAKE_MUSUBI_FAIL": "wan_generate_video"}).returncode == 0  # samples failed
    run_json = box.output / "r" / "run.json"
    run_json.write_text(json.dumps(json.loads(run_json.read_text()) | {"status": "running"}))  # as if cut short
    assert box.run(env).returncode == 0
    first = [c["script"] for c in box.calls()].count("wan_generate_video")
    run_json.write_text(json.dumps(json.loads(run_json.read_text()) | {"status": "running"}))
    third = box.run(env)
    assert third.returncode == 0 and "an earlier attempt of this run sampled this epoch" in third.stdout
    assert [c["script"] for c in box.calls()].count("wan_generate_video") == first == 3  # 1 failed + 2 epochs
    record = json.loads(run_json.read_text())["samples"]
    assert record["status"] == "succeeded" and len(record["videos"]) == 4 and len(record["sheets"]) == 2
