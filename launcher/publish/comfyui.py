"""A ComfyUI workflow (API format) that runs the published LoRA as the run's own samples did.

Built from ComfyUI's stock nodes only (their definitions at v0.3.64 are in comfyui_nodes.json, which the tests
check every node and input against), shaped like ComfyUI's own Wan templates (comfyui-workflow-templates 0.1.94):
UNETLoader -> [Lightning LoRA] -> our LoRA (LoraLoaderModelOnly) -> ModelSamplingSD3(shift) -> sampler; CLIPLoader
type "wan"; VAELoader; EmptyHunyuanLatentVideo (text-to-video) or WanImageToVideo (image-to-video, with CLIP vision
for Wan 2.1); VAEDecode -> CreateVideo -> SaveVideo.

Wan 2.2 runs two KSamplerAdvanced: the high-noise expert from step 0 to the switch step (leftover noise kept),
the low-noise one from there to the end. The switch step is where the sigmas ComfyUI samples with fall below the
model's boundary (0.875 text-to-video, 0.9 image-to-video; musubi's wan configs, our contract), computed as
ComfyUI computes them: the "simple" scheduler (comfy/samplers.py:413 simple_scheduler) over ModelSamplingSD3's
flow sigmas (comfy/model_sampling.py:238 time_snr_shift, :253 set_parameters: sigma(k/1000), k = 1..1000).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from launcher.publish import models
from launcher.publish.models import Sampling

SAMPLER = {"wan21": "uni_pc", "wan22": "euler"}  # ComfyUI's Wan 2.1 / Wan 2.2 templates; musubi samples with UniPC
SCHEDULER = "simple"


def sigma(shift: float, t: float) -> float:
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def switch_step(steps: int, shift: float, boundary: float) -> int:
    """The first step whose sigma is below the boundary: the high-noise expert runs the steps before it."""
    stride = 1000 / steps
    for x in range(steps):
        if sigma(shift, (1000 - int(x * stride)) / 1000) < boundary:
            return x
    return steps


@dataclass
class Graph:
    """An API-format prompt: {"<id>": {"class_type", "inputs", "_meta": {"title"}}}; links are [id, slot]."""

    nodes: dict[str, dict] = field(default_factory=dict)

    def add(self, class_type: str, title: str, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
        return node_id


def out(node_id: str, slot: int = 0) -> list:
    return [node_id, slot]


@dataclass(frozen=True)
class Prompt:
    text: str
    seed: int
    frames: int
    image: str | None  # the I2V start frame's file name, for ComfyUI's input folder


@dataclass(frozen=True)
class Spec:
    """Everything the workflow needs from the run."""

    family: str
    task: str
    dits: dict[str, str]  # expert ("high"/"low", or "" for Wan 2.1) -> DiT file name
    vae: str  # the VAE file name
    loras: dict[str, str]  # expert -> our LoRA's file name (only the trained experts)
    lightning: dict[str, tuple[str, float]]  # expert -> (LoRA path under models/loras, strength)
    sampling: Sampling
    prompt: Prompt


def _model(g: Graph, spec: Spec, expert: str) -> str:
    label = f" ({expert} noise)" if expert else ""
    model = out(g.add("UNETLoader", f"Load Diffusion Model{label}", unet_name=spec.dits[expert],
                      weight_dtype="default"))
    if expert in spec.lightning:
        name, strength = spec.lightning[expert]
        model = out(g.add("LoraLoaderModelOnly", f"Lightning LoRA{label}", model=model, lora_name=name,
                          strength_model=strength))
    if expert in spec.loras:
        model = out(g.add("LoraLoaderModelOnly", f"This LoRA{label}", model=model, lora_name=spec.loras[expert],
                          strength_model=1.0))
    return g.add("ModelSamplingSD3", f"Shift{label}", model=model, shift=spec.sampling.shift)


def _latent(g: Graph, spec: Spec, clip: str, vae: str) -> tuple[list, list, list]:
    """(positive, negative, latent): text-to-video's empty latent, or image-to-video's start frame."""
    s, p = spec.sampling, spec.prompt
    positive = out(g.add("CLIPTextEncode", "Prompt", text=p.text, clip=out(clip)))
    negative = out(g.add("CLIPTextEncode", "Negative prompt", text=models.NEGATIVE_PROMPT, clip=out(clip)))
    size = {"width": s.width, "height": s.height, "length": p.frames, "batch_size": 1}
    if not models.is_i2v(spec.task):
        return positive, negative, out(g.add("EmptyHunyuanLatentVideo", "Empty video latent", **size))
    image = out(g.add("LoadImage", "Start image", image=p.image or "start.png"))
    extra = {}
    if spec.family == "wan21":  # Wan 2.1 I2V also reads the image through CLIP vision; Wan 2.2 I2V does not
        vision = g.add("CLIPVisionLoader", "Load CLIP Vision", clip_name=models.file_name(models.CLIP_VISION))
        extra["clip_vision_output"] = out(g.add("CLIPVisionEncode", "CLIP Vision Encode", clip_vision=out(vision),
                                                image=image, crop="none"))
    node = g.add("WanImageToVideo", "Image to video", positive=positive, negative=negative, vae=out(vae),
                 start_image=image, **size, **extra)
    return out(node, 0), out(node, 1), out(node, 2)


def _sample(g: Graph, spec: Spec, conditioning: tuple[list, list, list]) -> list:
    s, seed = spec.sampling, spec.prompt.seed
    positive, negative, latent = conditioning
    common = {"positive": positive, "negative": negative, "sampler_name": SAMPLER[spec.family],
              "scheduler": SCHEDULER, "steps": s.steps}
    if spec.family == "wan21":
        model = _model(g, spec, "")
        return out(g.add("KSampler", "Sample", model=out(model), seed=seed, cfg=s.guidance["low"],
                         latent_image=latent, denoise=1.0, **common))
    switch = switch_step(s.steps, s.shift, s.boundary)
    high, low = _model(g, spec, "high"), _model(g, spec, "low")
    latent = out(g.add("KSamplerAdvanced", f"High-noise expert: steps 0-{switch}", model=out(high),
                       add_noise="enable", noise_seed=seed, cfg=s.guidance["high"], latent_image=latent,
                       start_at_step=0, end_at_step=switch, return_with_leftover_noise="enable", **common))
    return out(g.add("KSamplerAdvanced", f"Low-noise expert: steps {switch}-{s.steps}", model=out(low),
                     add_noise="disable", noise_seed=seed, cfg=s.guidance["low"], latent_image=latent,
                     start_at_step=switch, end_at_step=10000, return_with_leftover_noise="disable", **common))


def api_workflow(spec: Spec) -> dict:
    g = Graph()
    clip = g.add("CLIPLoader", "Load CLIP (umT5)", clip_name=models.file_name(models.TEXT_ENCODER), type="wan",
                 device="default")
    vae = g.add("VAELoader", "Load VAE", vae_name=spec.vae)
    latent = _sample(g, spec, _latent(g, spec, clip, vae))
    images = g.add("VAEDecode", "Decode", samples=latent, vae=out(vae))
    video = g.add("CreateVideo", "Create video", images=out(images), fps=float(models.FPS))
    g.add("SaveVideo", "Save video", video=out(video), filename_prefix="video/lora-gym", format="auto", codec="auto")
    return g.nodes
