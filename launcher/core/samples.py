"""The plan's sample steps: musubi's own wan_generate_video.py on saved checkpoints, after training.

Pure like the plan: which epochs, which prompts (the dataset's own captions plus `samples.prompts`), and one
argv per sampled epoch. Wan 2.2 samples through both experts at once (the low-noise DiT with its LoRA as
`--dit`/`--lora_weight`, the high-noise one as `--dit_high_noise`/`--lora_weight_high_noise`), which is what a
user loads in ComfyUI. The prompts go in one `--from_file` file so each DiT loads once per epoch; musubi names
each video `<time>_<seed>.mp4`, so every prompt gets its own seed and the entrypoint finds videos by seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from launcher import contract
from launcher.core.dataset import DatasetLayout
from launcher.core.errors import UserError
from launcher.core.schema import Preset

SAMPLES_FOLDER = "samples"
DIT_KEYS_MARKER = ".lora-gym-dit-keys.ok"
FPS = 16  # Wan's frame rate; also what the videos are written at
# wan_train_network's --attention flags, as wan_generate_video's --attn_mode names them.
ATTN_MODE = {"sdpa": "sdpa", "flash_attn": "flash", "xformers": "xformers", "flash3": "flash3"}


@dataclass(frozen=True)
class SamplePrompt:
    text: str
    seed: int
    frames: int
    image: str | None  # container path of the I2V start frame
    source: str  # "caption:<dataset file>" or "samples.prompts.<n>"


@dataclass(frozen=True)
class SamplesPlan:
    folder: str
    prompts_path: str
    prompts_file: str  # musubi --from_file syntax, written by the entrypoint before the first sample step
    prompts: tuple[SamplePrompt, ...]
    epochs: tuple[int, ...]
    steps: tuple[str, ...]  # the sample steps (and merges or key copies only they need): failing spares the LoRAs
    note: str
    # (DiT, its bare-key copy): the entrypoint samples from the copy where its dit-keys step wrote one.
    dit_copies: tuple[tuple[str, str], ...] = ()
    pair: str | None = None  # the other expert's run folder (LORA_GYM_PAIR_DIR)
    pair_loras: tuple[str, ...] = ()  # that run's checkpoints the samples load: all whole once it has trained


def dit_keys(expert: str | None, dit: str, key: str, paths) -> tuple[str, tuple[str, ...], str, str]:
    """(step name, argv, marker, copy) of the bare-key copy a sample step loads instead of `dit` when its keys carry
    `model.diffusion_model.`: musubi's generator names the LoRA modules it merges after the DiT file's own keys
    (utils/lora_utils.py, load_safetensors_with_lora_and_fp8) and strips that prefix only afterwards
    (wan/modules/model.py, load_wan_model: "1.3B model has this prefix"), so with it no LoRA key matches. The step
    reads the header and writes the copy only then (entrypoints/ditkeys.py); the entrypoint swaps it in where it
    exists. `key`: the DiT's content key, so one copy serves every run."""
    name = dit.rsplit("/", 1)[-1]
    folder = f"{paths.cache}/dit-keys/{key}"
    argv = (paths.python, "-m", "lora_gym_entrypoint.ditkeys", "--dit", dit, "--output", f"{folder}/{name}")
    return f"dit-keys{'-' + expert if expert else ''}", argv, f"{folder}/{DIT_KEYS_MARKER}", f"{folder}/{name}"


def sampled_epochs(max_epochs: int, save_every: int, every: int) -> list[int]:
    """Every `every`-th saved checkpoint plus the last (musubi saves epochs n, 2n, ... below max, then max)."""
    saved = [*range(save_every, max_epochs, save_every), max_epochs]
    chosen = saved[every - 1::every]
    return chosen if chosen and chosen[-1] == max_epochs else [*chosen, max_epochs]


def checkpoint(run_dir: str, name: str, epoch: int, max_epochs: int) -> str:
    """musubi's file name for one saved epoch: the last one is the plain `<name>.safetensors`."""
    return f"{run_dir}/{name}.safetensors" if epoch == max_epochs else f"{run_dir}/{name}-{epoch:06d}.safetensors"


def _alternate(files: list[tuple], count: int) -> list[tuple]:
    # Images and videos in turn (each sorted by path), so two prompts cover both kinds when a dataset has both.
    kinds = [[f for f in files if f[1] == kind] for kind in ("image", "video")]
    turns = [f for pair in zip(*kinds, strict=False) for f in pair]
    longer = max(kinds, key=len)[len(min(kinds, key=len)):]
    return (turns + longer)[:count]


def _caption_prompts(preset: Preset, layout: DatasetLayout, dataset: str, i2v: bool) -> list[tuple]:
    files = sorted((f"{d.relpath}/{f}".lstrip("/"), d.kind, c) for d in layout.dirs
                   for f, c in zip(d.files, d.captions, strict=False))
    # An I2V sample needs a start frame: an image's caption comes with its image.
    usable = [f for f in files if f[1] == "image" or not i2v]
    return [(prompt_text(text), None, None, f"{dataset}/{rel}" if i2v else None, f"caption:{rel}")
            for rel, _kind, text in _alternate(usable, preset.samples.captions)]


def prompt_text(caption: str) -> str:
    """A caption as one prompt-file line: musubi reads " --" as an option and a leading "#" as a comment."""
    while " --" in caption:
        caption = caption.replace(" --", " -")
    return caption.lstrip("# ") or "a video"


def _given_prompts(preset: Preset, layout: DatasetLayout, dataset: str, i2v: bool) -> list[tuple]:
    images = {f"{d.relpath}/{f}".lstrip("/") for d in layout.of_kind("image") for f in d.files}
    result = []
    for n, p in enumerate(preset.samples.prompts):
        where = f"samples.prompts.{n}"
        if p.image is not None and p.image not in images:
            raise UserError(f"{where}.image: {p.image!r} is not an image of the dataset: give its path inside the "
                            f"dataset folder, one of {', '.join(sorted(images)) or '(none)'}")
        if i2v and p.image is None:
            raise UserError(f"{where}: {preset.model.task} starts every video from an image: add one (`--i IMAGE` "
                            "in a --samples file, image=... in a preset)")
        if not i2v and p.image is not None:
            raise UserError(f"{where}.image: {preset.model.task} is text-to-video and takes no start image: drop it")
        result.append((p.text, p.seed, p.frames, p.image and f"{dataset}/{p.image}", where))
    return result


def sample_prompts(preset: Preset, layout: DatasetLayout, dataset: str) -> tuple[SamplePrompt, ...]:
    s, i2v = preset.samples, contract.task_info(preset.model.task)["needs_i2v_latent_cache"]
    raw = _caption_prompts(preset, layout, dataset, i2v) + _given_prompts(preset, layout, dataset, i2v)
    prompts, seeds = [], set()
    for n, (text, seed, frames, image, source) in enumerate(raw):
        seed = s.seed + n if seed is None else seed
        if seed in seeds:
            raise UserError(f"{source}: seed {seed} is used by another sample prompt: give each prompt its own "
                            "(musubi names the videos by seed)")
        seeds.add(seed)
        prompts.append(SamplePrompt(text, seed, frames or s.frames, image, source))
    return tuple(prompts)


def prompts_file(preset: Preset, prompts: tuple[SamplePrompt, ...]) -> str:
    s = preset.samples
    lines = [f"{p.text} --w {s.width} --h {s.height} --f {p.frames} --d {p.seed}" + (f" --i {p.image}" if p.image
                                                                                       else "") for p in prompts]
    return "\n".join(lines) + "\n"


def _model_args(preset: Preset, paths, weights, fitted) -> list[str]:
    """`fitted`: the memory settings the fit chose for training (launcher/core/fit.py Choice); sampling loads
    the same DiTs with less activation memory, so what fits training fits sampling."""
    m, t = preset.model, preset.train
    args = ["--task", m.task, "--vae", weights.files["vae"].container_path, "--t5", weights.files["t5"].container_path]
    if m.clip:
        args += ["--clip", weights.files["clip"].container_path]
    args += ["--fp8_t5"] * preset.cache.fp8_t5 + ["--vae_cache_cpu"] * preset.cache.vae_cache_cpu
    args += ["--attn_mode", ATTN_MODE[t.attention]] + ["--fp8"] * fitted.fp8_base
    args += ["--fp8_scaled"] * fitted.fp8_scaled
    return args + (["--blocks_to_swap", str(fitted.blocks_to_swap)] if fitted.blocks_to_swap else [])


def _sampling_args(preset: Preset) -> list[str]:
    s = preset.samples
    args = ["--video_size", str(s.height), str(s.width), "--video_length", str(s.frames), "--fps", str(FPS)]
    if s.steps:
        args += ["--infer_steps", str(s.steps)]
    if s.guidance:  # Wan 2.2 otherwise keeps its own high-noise guidance (e.g. 4.0 with 3.0 low)
        args += ["--guidance_scale", repr(s.guidance)]
        args += ["--guidance_scale_high_noise", repr(s.guidance)] if preset.family == "wan22" else []
    return args + (["--flow_shift", repr(s.flow_shift)] if s.flow_shift else [])


def _lora_args(preset: Preset, loras: dict, dits: dict, epoch: int) -> list[str]:
    """The DiT(s) and LoRA(s) of one epoch; `loras` maps expert (None for Wan 2.1) to (run_dir, name, max)."""
    def lora(expert):
        run_dir, name, last = loras[expert]
        return checkpoint(run_dir, name, epoch, last)

    if preset.family == "wan21":
        return ["--dit", dits[None], "--lora_weight", lora(None)]
    args = ["--dit", dits["low"]] + (["--lora_weight", lora("low")] if "low" in loras else [])
    args += ["--dit_high_noise", dits["high"]] + (["--lora_weight_high_noise", lora("high")] if "high" in loras else [])
    # Only one 14B expert on the GPU at a time: the other waits in CPU memory.
    return args + ["--offload_inactive_dit"]


def no_prompt_note(preset: Preset) -> str:
    if preset.samples.captions and contract.task_info(preset.model.task)["needs_i2v_latent_cache"]:
        return ("no sample: an I2V video starts from an image, and the dataset has none; add samples.prompts with "
                "an image (--samples FILE)")
    return "no sample: samples.captions=0 and no samples.prompts"


def note(preset: Preset, trained: list, pair: str | None = None) -> str:
    if pair:
        other = {"high": "low", "low": "high"}[trained[0]]
        return (f"each sampled checkpoint with both experts' LoRAs, the {other}-noise one from {pair} (trained in "
                "another container): the run that finishes training last samples the pair")
    if preset.family == "wan21" or len(trained) == 2:
        return "each sampled checkpoint with every LoRA this run trains"
    other = {"high": "low", "low": "high"}[trained[0]]
    merged = " (with its Lightning LoRA merged, like the trained one)" if getattr(preset.experts, other).lightning \
        else ""
    return (f"only the {trained[0]}-noise expert is trained here: samples pair its LoRA with the {other}-noise "
            f"expert's base weights{merged}, no LoRA on it")


def sample_argv(preset: Preset, paths, weights, loras: dict, dits: dict, epoch: int, files: tuple[str, str],
                fitted):
    """`python wan_generate_video.py ...` for one epoch; files = (prompts file, output folder)."""
    script = f"{paths.musubi}/src/musubi_tuner/wan_generate_video.py"
    model = _model_args(preset, paths, weights, fitted)
    return (paths.python, script, *model, *_lora_args(preset, loras, dits, epoch),
            *_sampling_args(preset), "--seed", str(preset.samples.seed), "--from_file", files[0],
            "--save_path", files[1], "--output_type", "video")


def epoch_folder(folder: str, epoch: int) -> str:
    return f"{folder}/e{epoch:06d}"


# --- `launcher run --samples FILE` ---------------------------------------------------------------------

# musubi's own prompt-file options for what a user may set per prompt: frames, seed, I2V start image.
FILE_OPTIONS = {"f": ("frames", int), "d": ("seed", int), "i": ("image", str)}
# musubi's options that the preset sets once for every prompt (wan_generate_video.py, parse_prompt_line).
PRESET_OPTIONS = {"w": "samples.width", "h": "samples.height", "s": "samples.steps", "g": "samples.guidance",
                  "fs": "samples.flow_shift"}
# An option starts at `--` at the start of the line or after a space; musubi splits at " --" alike.
OPTION_START = re.compile(r"(?:^|\s)--(?=\S)")


def _file_option(option: str, where: str) -> tuple[str, object]:
    key, _, value = option.strip().partition(" ")
    if key in PRESET_OPTIONS:
        raise UserError(f"{where}: --{key} is the same for every prompt: drop it and use --set "
                        f"{PRESET_OPTIONS[key]}={value.strip() or '...'}")
    if key not in FILE_OPTIONS or not value.strip():
        raise UserError(f"{where}: --{key} is not a sample option: use --f FRAMES, --d SEED or --i IMAGE "
                        "(a path inside the dataset folder)")
    field, kind = FILE_OPTIONS[key]
    try:
        return field, kind(value.strip())
    except ValueError:
        raise UserError(f"{where}: --{key} needs a whole number, got {value.strip()!r}") from None


def _file_line(line: str, where: str) -> dict:
    text, *options = OPTION_START.split(line)
    if not text.strip():  # the text's absence is the problem, whatever the options say
        raise UserError(f"{where}: the line has options but no prompt text: write the prompt first, then its "
                        "options (text --f FRAMES --d SEED)")
    return {"text": text.strip(), **dict(_file_option(option, where) for option in options)}


def parse_samples_file(text: str, origin: str) -> list[dict]:
    """Prompts from a `--samples` file: one per line, `text [--f FRAMES] [--d SEED] [--i IMAGE]`; # comments."""
    entries = [_file_line(line.strip(), f"{origin} line {n}") for n, line in enumerate(text.splitlines(), 1)
               if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise UserError(f"{origin} has no prompt: write one prompt per line")
    return entries
