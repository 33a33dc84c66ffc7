"""What a published LoRA is for: the Wan-AI base model, the Hub task, ComfyUI's model files, the sampling defaults.

Facts, each with its source:
- Base repos and license: the Wan-AI model repos on the Hub; Wan-Video/Wan2.2 README.md "License Agreement":
  "The models in this repository are licensed under the Apache 2.0 License" (Wan 2.1's README says the same).
- ComfyUI files: the Comfy-Org repackaged files named by ComfyUI's own Wan templates (comfyui-workflow-templates
  0.1.94, the version ComfyUI v0.3.64's requirements.txt pins: text_to_video_wan.json, image_to_video_wan.json,
  video_wan2_2_14B_t2v.json, video_wan2_2_14B_i2v.json): umt5_xxl_fp8_e4m3fn_scaled.safetensors (CLIPLoader type
  "wan"), wan_2.1_vae.safetensors, clip_vision_h.safetensors (Wan 2.1 I2V only); the DiT files are the preset's own.
- Sampling defaults when the preset leaves samples.steps/guidance/flow_shift empty: musubi-tuner 30c658c4's Wan
  configs (src/musubi_tuner/wan/configs/wan_*.py sample_steps, sample_shift, sample_guide_scale (low, high)) and
  the negative prompt of shared_config.py (sample_neg_prompt), which wan_generate_video uses by default; shift and
  guidance come from the contract (launcher/contract, official_inference_*), steps from the config files.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher import contract

LICENSE = "apache-2.0"
COMFY_WAN21 = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
TEXT_ENCODER = f"{COMFY_WAN21}:split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"
CLIP_VISION = f"{COMFY_WAN21}:split_files/clip_vision/clip_vision_h.safetensors"
# musubi's wan/configs/wan_{t2v_A14B,i2v_A14B,t2v_14B,t2v_1_3B,i2v_14B}.py: sample_steps
DEFAULT_STEPS = {"t2v-A14B": 40, "i2v-A14B": 40, "t2v-14B": 50, "t2v-1.3B": 50, "i2v-14B": 40}
NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，"
                   "整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，"
                   "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
                   "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
FPS = 16  # wan_shared_cfg.sample_fps; launcher/core/samples.py writes the samples at it too

# (task, a word of the DiT file name or None) -> the Wan-AI repo of the base model
BASES = [("t2v-A14B", None, "Wan-AI/Wan2.2-T2V-A14B"), ("i2v-A14B", None, "Wan-AI/Wan2.2-I2V-A14B"),
         ("t2v-14B", None, "Wan-AI/Wan2.1-T2V-14B"), ("t2v-1.3B", None, "Wan-AI/Wan2.1-T2V-1.3B"),
         ("i2v-14B", "480p", "Wan-AI/Wan2.1-I2V-14B-480P"), ("i2v-14B", None, "Wan-AI/Wan2.1-I2V-14B-720P")]


def base_model(task: str, dit_file: str) -> str:
    name = dit_file.rsplit("/", 1)[-1].lower()
    return next(repo for t, word, repo in BASES if t == task and (word is None or word in name))


def is_i2v(task: str) -> bool:
    return bool(contract.task_info(task)["needs_i2v_latent_cache"])


def pipeline_tag(task: str) -> str:
    return "image-to-video" if is_i2v(task) else "text-to-video"


def hub_file(ref: str) -> tuple[str, str]:
    """"owner/repo:path" (the preset's form) -> (repo, path)."""
    repo, _, path = ref.partition(":")
    return repo, path


def file_name(ref: str) -> str:
    """The file's name alone, as ComfyUI lists it in its models folder."""
    return hub_file(ref)[1].rsplit("/", 1)[-1]


def url(endpoint: str, ref: str) -> str:
    repo, path = hub_file(ref)
    return f"{endpoint}/{repo}/resolve/main/{path}"


@dataclass(frozen=True)
class Sampling:
    steps: int
    shift: float
    guidance: dict[str, float]  # "high"/"low" for Wan 2.2, "low" alone for Wan 2.1
    width: int
    height: int
    boundary: float | None  # Wan 2.2: the high-noise expert runs while sigma >= boundary


def sampling(settings: dict) -> Sampling:
    """The run's own sample settings (samples.*), else what musubi samples with by default for the task."""
    task, s = settings["model"]["task"], settings.get("samples") or {}
    info = contract.task_info(task)
    low, *high = info["official_inference_guide_scale"]
    guidance = {"low": s.get("guidance") or low, "high": s.get("guidance") or (high[0] if high else low)}
    return Sampling(steps=s.get("steps") or DEFAULT_STEPS[task],
                    shift=s.get("flow_shift") or info["official_inference_sample_shift"], guidance=guidance,
                    width=s.get("width") or 832, height=s.get("height") or 480,
                    boundary=info["default_timestep_boundary"])
