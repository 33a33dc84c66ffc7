"""The model card (README.md): YAML front matter the Hub reads, then what the LoRA is and how to use it.

Front matter keys as the Hub documents them (huggingface/hub-docs docs/hub/model-cards.md and modelcard.md):
base_model (the Wan-AI repo) with base_model_relation "adapter", library_name, pipeline_tag, license, tags,
instance_prompt (the trigger word) and widget (prompt + sample video pairs, the gallery a LoRA page shows),
written with huggingface_hub's own ModelCardData.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.publish import models
from launcher.publish.comfyui import switch_step
from launcher.publish.loras import LoraFile, facts

DIFFUSERS_PIPELINE = {"text-to-video": "WanPipeline", "image-to-video": "WanImageToVideoPipeline"}


@dataclass(frozen=True)
class Sample:
    repo_path: str
    epoch: int
    prompt: str
    label: str  # which run folder it came from, when the run has several (one per expert), else ""


@dataclass(frozen=True)
class CardInput:
    repo_id: str
    url: str  # the repo's web address: <endpoint>/<repo id>
    title: str
    settings: dict
    record: dict  # the first run.json: preset, dataset, training, status
    experts: list[str]
    loras: list[LoraFile]
    samples: list[Sample]
    samples_note: str
    loss: str | None  # loss.png (shown) or loss.csv (linked), or None without a loss history
    files: list[tuple[str, str, str]]  # ComfyUI model files: (name, models/ folder, download URL)
    trigger: str | None
    lora_checked: bool  # run.json's lora_check passed for every training: every key lands on the DiT


def _front_matter(c: CardInput) -> str:
    from huggingface_hub import ModelCardData

    task = c.settings["model"]["task"]
    lightning = any((e or {}).get("lightning") for e in (c.settings.get("experts") or {}).values())
    family = {"wan21": "wan2.1", "wan22": "wan2.2"}[c.settings["family"]]
    last = max((s.epoch for s in c.samples), default=None)
    widget = [{"text": s.prompt, "output": {"url": s.repo_path}} for s in c.samples if s.epoch == last]
    data = ModelCardData(
        base_model=models.base_model(task, _dits(c.settings)[0]), base_model_relation="adapter",
        library_name="diffusers", pipeline_tag=models.pipeline_tag(task), license=models.LICENSE,
        tags=["lora", family, "wan", models.pipeline_tag(task), "musubi-tuner", "lora-gym", "comfyui",
              *(["lightning"] if lightning else [])],
        instance_prompt=c.trigger, widget=widget or None)
    return data.to_yaml()


def _dits(settings: dict) -> list[str]:
    experts = settings.get("experts")
    refs = [experts[e]["dit"] for e in ("high", "low")] if experts else [settings["model"]["dit"]]
    return [models.hub_file(r)[1] for r in refs]


def _settings_rows(c: CardInput) -> list[tuple[str, str]]:
    preset, s, r = c.record.get("preset") or {}, c.settings, c.record
    train, experts = s.get("train") or {}, s.get("experts") or {}
    rows = [("preset", f"`{preset.get('name')}` ({preset.get('origin')}, sha256 `{preset.get('sha256', '')[:16]}`)"),
            ("overrides", "<br>".join(f"`{o}`" for o in preset.get("overrides", [])) or "none"),
            ("task", f"`{s['model']['task']}`"), ("experts", ", ".join(c.experts) or "one DiT (Wan 2.1)")]
    for name, e in ([(x, experts[x]) for x in c.experts] if experts else [("", train)]):
        label = f" ({name} noise)" if name else ""
        rows.append((f"rank / alpha / learning rate{label}",
                     f"{e.get('network_dim')} / {e.get('network_alpha')} / {e.get('learning_rate')}"))
        if e.get("lightning"):
            rows.append((f"Lightning LoRA merged before training{label}",
                         f"`{e['lightning']['lora']}` at strength {e['lightning']['strength']}"))
    counts = (r.get("dataset") or {}).get("counts") or {}
    steps = ", ".join(f"{k.removeprefix('train-') or 'train'}: {v.get('total_steps')} steps over {v.get('epochs')} "
                      f"epochs" for k, v in sorted((r.get("training") or {}).items()))
    rows += [("dataset", ", ".join(f"{n} {kind}s" for kind, n in sorted(counts.items())) or "not recorded"),
             ("training", steps or "not recorded"),
             ("epochs / saved every", f"{train.get('max_train_epochs')} / {train.get('save_every_n_epochs')}"),
             ("network", f"`{train.get('network_module')}`, musubi-tuner `{facts()['musubi']['commit'][:12]}`")]
    return rows


def _table(rows, head=("", "")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "| --- | --- |"]
    return "\n".join(lines + [f"| {a} | {b} |" for a, b in rows])


def _lora_rows(c: CardInput, boundary: float | None) -> list[tuple[str, str]]:
    rows = []
    for f in c.loras:
        what = {"high": f"high-noise expert (sigma >= {boundary})", "low": f"low-noise expert (sigma < {boundary})",
                None: "the DiT"}[f.expert]
        rows.append((f"[`{f.repo_path}`]({f.repo_path})", f"{'epoch ' + str(f.epoch) if f.epoch else 'final'}, "
                                                          f"for the {what}"))
    return rows


def _cfg(s: models.Sampling) -> str:
    if s.boundary is None or s.guidance["high"] == s.guidance["low"]:
        return f"CFG {s.guidance['low']}"
    return f"CFG {s.guidance['high']} (high noise) / {s.guidance['low']} (low noise)"


def _comfyui(c: CardInput) -> str:
    s = models.sampling(c.settings)
    where = "\n".join(f"| `{name}` | `ComfyUI/models/{folder}/` | [download]({url}) |" for name, folder, url in c.files)
    split = ""
    if s.boundary is not None:
        switch = switch_step(s.steps, s.shift, s.boundary)
        split = (f" Two **KSamplerAdvanced** nodes split the {s.steps} steps at step {switch}, where the sigma falls "
                 f"below the boundary {s.boundary}: the high-noise model runs steps 0-{switch}, the low-noise one "
                 f"{switch}-{s.steps}.")
    experts = " (each expert's file on that expert's model)" if s.boundary is not None else ""
    image = " Put your start image in `ComfyUI/input/` and pick it in **Load Image**." if models.is_i2v(
        c.settings["model"]["task"]) else ""
    return (f"Open [`comfyui/workflow.json`](comfyui/workflow.json) in ComfyUI (or queue "
            f"[`comfyui/workflow-api.json`](comfyui/workflow-api.json) through its API). It loads this LoRA with "
            f"ComfyUI's **LoraLoaderModelOnly** node at strength 1.0{experts}, shift {s.shift}, {s.steps} steps, "
            f"{_cfg(s)}, with one of the run's sample prompts.{split}{image} Built from ComfyUI v0.3.64's stock "
            f"nodes only. Put the files where it expects them:\n\n| file | folder | |\n| --- | --- | --- |\n{where}\n")


def _diffusers(c: CardInput) -> str:
    task = c.settings["model"]["task"]
    base, pipeline = models.base_model(task, _dits(c.settings)[0]) + "-Diffusers", DIFFUSERS_PIPELINE[
        models.pipeline_tag(task)]
    lines = [f"from diffusers import {pipeline}", "",
             f'pipe = {pipeline}.from_pretrained("{base}", torch_dtype=torch.bfloat16)']
    for f in (f for f in c.loras if f.epoch is None):
        into = ", load_into_transformer_2=True" if f.expert == "low" else ""  # transformer_2: the low-noise expert
        lines.append(f'pipe.load_lora_weights("{c.repo_id}", weight_name="{f.repo_path}"{into})')
    code = "```python\nimport torch\n" + "\n".join(lines) + "\n```\n"
    lightning = [(e, x["lightning"]) for e, x in (c.settings.get("experts") or {}).items() if x.get("lightning")]
    if not lightning:
        return code
    return code + ("\nThis LoRA was trained on the Lightning-merged experts: load the same Lightning LoRA too ("
                   + ", ".join(f"`{x['lora']}` at {x['strength']} on the {e}-noise expert" for e, x in lightning)
                   + f") and sample as its samples did: {models.sampling(c.settings).steps} steps, guidance "
                   f"{models.sampling(c.settings).guidance['low']}.\n")


def _samples(c: CardInput) -> str:
    note = f"{c.samples_note[:1].upper()}{c.samples_note[1:]}.\n"
    if not c.samples:
        return note
    out = [note]
    for epoch in sorted({s.epoch for s in c.samples}):
        out.append(f"### Epoch {epoch}\n")
        for s in (x for x in c.samples if x.epoch == epoch):
            label = f" ({s.label})" if s.label else ""
            out.append(f"<video controls loop muted src=\"{c.url}/resolve/main/{s.repo_path}\"></video>\n\n"
                       f"*{s.prompt}*{label}\n")
    return "\n".join(out)


def render(c: CardInput) -> str:
    s = models.sampling(c.settings)
    trigger = f"Trigger word: `{c.trigger}`." if c.trigger else "No trigger word given (publish with --trigger)."
    loss = {None: "No loss recorded.\n", "loss.csv": "Loss per step: [`loss.csv`](loss.csv).\n"}.get(
        c.loss, f"![training loss]({c.loss})\n")
    body = [f"# {c.title}\n", f"A {models.pipeline_tag(c.settings['model']['task'])} LoRA for "
            f"[{models.base_model(c.settings['model']['task'], _dits(c.settings)[0])}]"
            f"(https://huggingface.co/{models.base_model(c.settings['model']['task'], _dits(c.settings)[0])}), "
            f"trained with LoRA Gym on musubi-tuner. {trigger}\n",
            "## Files\n", _table(_lora_rows(c, s.boundary), ("file", "what")),
            "\nThe files are musubi-tuner's own format (`lora_unet_...` keys), unconverted: ComfyUI and diffusers "
            "load every key as they are." + (" After training, LoRA Gym checked every key against the DiT it was "
                                             "trained on (names, shapes, rank, alpha)." if c.lora_checked else "")
            + "\n", "## ComfyUI\n", _comfyui(c), "## diffusers\n", _diffusers(c),
            "## Samples\n", _samples(c), "## Training\n", _table(_settings_rows(c), ("setting", "value")), "",
            "## Loss\n", loss]
    return f"---\n{_front_matter(c)}\n---\n\n" + "\n".join(body)
