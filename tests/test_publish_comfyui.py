"""The published ComfyUI workflows, checked against ComfyUI's own node definitions at v0.3.64
(launcher/publish/comfyui_nodes.json, read from comfyanonymous/ComfyUI at 637221995f74 and kept as data): every
node type exists, every input is one the node defines with the right type, range or option, every link joins an
output to an input of the same type, and the UI form holds the same graph. Then what the graph does: both experts'
LoRAs on their own experts, the switch step where ComfyUI's sigmas cross the boundary, Lightning's 4 steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.core.presets import load_preset
from launcher.publish import bundle, comfyui, comfyui_ui, loras, models
from launcher.publish.source import Part, Run

NODES = comfyui_ui.definitions()
PRESETS = sorted(p.stem for p in (Path(__file__).parent.parent / "presets").glob("*.toml"))


def validate_api(api: dict) -> list[str]:
    """What ComfyUI's execution.validate_inputs would refuse (execution.py:725 at the pinned commit)."""
    problems = []
    for node_id, node in api.items():
        spec = NODES["nodes"].get(node["class_type"])
        if spec is None:
            problems.append(f"{node_id}: unknown node {node['class_type']}")
            continue
        known = {s["name"]: s for s in spec["inputs"]}
        problems += [f"{node_id}: {node['class_type']} has no input {name}" for name in node["inputs"]
                     if name not in known]
        for name, s in known.items():
            if name not in node["inputs"]:
                problems += [] if s.get("optional") else [f"{node_id}: required input {name} missing"]
                continue
            problems += [f"{node_id}.{name}: {p}" for p in _input_problems(api, s, node["inputs"][name])]
    return problems


def _input_problems(api: dict, spec: dict, value) -> list[str]:
    if spec["type"] not in comfyui_ui.WIDGETS:
        if not comfyui_ui.is_link(value) or value[0] not in api:
            return [f"{value!r} is not a link to a node"]
        outputs = NODES["nodes"][api[value[0]]["class_type"]]["outputs"]
        if value[1] >= len(outputs) or outputs[value[1]][1] != spec["type"]:
            return [f"links {api[value[0]]['class_type']} output {value[1]} to a {spec['type']} input"]
        return []
    if spec["type"] == "INT":
        ok = isinstance(value, int) and not isinstance(value, bool) and spec["min"] <= value <= spec["max"]
    elif spec["type"] == "FLOAT":
        ok = isinstance(value, int | float) and spec["min"] <= value <= spec["max"]
    elif spec["type"] == "STRING":
        ok = isinstance(value, str)
    elif "files" in spec:  # a models folder's file list (folder_paths.py), or the input folder for LoadImage
        ok = isinstance(value, str) and (spec["files"] == "input" or value.endswith(
            tuple(NODES["model_file_extensions"]["values"])))
    else:
        ok = value in (spec.get("options") or NODES["lists"][spec["options_from"]]["values"])
    return [] if ok else [f"{value!r} is not a valid {spec['type']}"]


def validate_ui(ui: dict, api: dict) -> list[str]:
    """The UI workflow holds the API graph: the same nodes, widget values in definition order, the same links."""
    problems = []
    nodes = {str(n["id"]): n for n in ui["nodes"]}
    if set(nodes) != set(api):
        return [f"UI nodes {sorted(nodes)} != API nodes {sorted(api)}"]
    links = {row[0]: row for row in ui["links"]}
    for node_id, node in nodes.items():
        spec = NODES["nodes"][node["type"]]
        if node["type"] != api[node_id]["class_type"]:
            problems.append(f"{node_id}: {node['type']} != {api[node_id]['class_type']}")
        if node["widgets_values"] != comfyui_ui.widget_values(node["type"], api[node_id]["inputs"]):
            problems.append(f"{node_id}: widgets_values out of order")
        wanted = [s for s in spec["inputs"] if s["type"] not in comfyui_ui.WIDGETS]
        for slot, entry in enumerate(node["inputs"]):
            if (entry["name"], entry["type"]) != (wanted[slot]["name"], wanted[slot]["type"]):
                problems.append(f"{node_id}: input slot {slot} is {entry['name']}")
            source = api[node_id]["inputs"].get(entry["name"])
            row = links.get(entry["link"])
            expected = None if source is None else [int(source[0]), source[1], int(node_id), slot]
            if (row[1:5] if row else None) != expected:
                problems.append(f"{node_id}.{entry['name']}: link {row} does not match the API's {source}")
    for row in ui["links"]:
        out_type = NODES["nodes"][nodes[str(row[1])]["type"]]["outputs"][row[2]][1]
        if row[5] != out_type or row[0] not in nodes[str(row[1])]["outputs"][row[2]]["links"]:
            problems.append(f"link {row} does not leave its output")
    return problems


def run_of(preset: str, expert: str | None, samples: dict | None = None) -> Run:
    """A finished run as run.json records it (settings = the validated preset), without training."""
    settings = load_preset(preset).preset.model_dump(mode="json")
    names = [f"{preset}-{e}" for e in ("high", "low") if expert in (e, "both")] if settings["experts"] else [preset]
    record = {"status": "succeeded", "expert": expert, "settings": settings, "preset": {"name": preset},
              "outputs": [{"path": f"{n}.safetensors"} for n in names], "samples": samples}
    return Run("r1", (Part(Path("/nowhere"), record),))


def files_of(run: Run) -> list[loras.LoraFile]:
    return [loras.LoraFile(Path(o["path"]), o["path"], loras.expert_of(o["path"]), None)
            for o in run.first.record["outputs"]]


def workflow(run: Run) -> dict:
    return comfyui.api_workflow(bundle._spec(run, files_of(run), None))


CASES = [(p, e) for p in PRESETS for e in (["high", "low", "both"] if p.startswith("wan22") else [None])]


@pytest.mark.parametrize(("preset", "expert"), CASES)
def test_every_preset_gives_a_workflow_comfyui_accepts(preset, expert):
    run = run_of(preset, expert)
    api = workflow(run)
    assert validate_api(api) == []
    downloads = bundle._downloads(run, files_of(run), "https://hub.test/me/x", "https://hub.test")
    ui = comfyui_ui.ui_workflow(api, downloads, "me/x:r1")
    assert validate_ui(ui, api) == []
    loaders = [n for n in ui["nodes"] if n["type"] in ("UNETLoader", "CLIPLoader", "VAELoader", "LoraLoaderModelOnly",
                                                        "CLIPVisionLoader")]
    assert all(n["properties"]["models"][0]["url"].startswith("https://hub.test/") for n in loaders)


def chain(api: dict, node_id: str) -> list[dict]:
    """The model path into a sampler: sampler <- ModelSamplingSD3 <- LoRAs <- UNETLoader."""
    nodes, current = [], api[node_id]["inputs"]["model"][0]
    while True:
        nodes.append(api[current])
        if "model" not in api[current]["inputs"]:
            return nodes[::-1]
        current = api[current]["inputs"]["model"][0]


def samplers(api: dict) -> dict[str, dict]:
    return {("high" if n["inputs"]["add_noise"] == "enable" else "low"): {"id": i, **n} for i, n in api.items()
            if n["class_type"] == "KSamplerAdvanced"}


@pytest.mark.parametrize("preset", ["wan22-t2v-lightning", "wan22-i2v-vanilla"])
def test_wan22_runs_each_expert_with_its_own_lora_split_at_the_boundary(preset):
    run = run_of(preset, "both", {"prompts": [{"text": "zorbix waves", "seed": 7, "frames": 21,
                                               "image": "/data/images/zorbix.png"}]})
    api, settings = workflow(run), run.settings
    s = models.sampling(settings)
    high, low = samplers(api)["high"], samplers(api)["low"]
    switch = switch_by_table(s.steps, s.shift, s.boundary)
    assert (high["inputs"]["start_at_step"], high["inputs"]["end_at_step"]) == (0, switch)
    assert (low["inputs"]["start_at_step"], low["inputs"]["end_at_step"]) == (switch, 10000)
    assert high["inputs"]["return_with_leftover_noise"] == "enable" and low["inputs"]["add_noise"] == "disable"
    assert low["inputs"]["latent_image"] == [high["id"], 0]  # the low expert continues the high expert's latent
    for expert, sampler in (("high", high), ("low", low)):
        path = chain(api, sampler["id"])
        dit = models.hub_file(settings["experts"][expert]["dit"])[1].rsplit("/", 1)[-1]
        assert path[0]["inputs"]["unet_name"] == dit
        loras_on_it = [n["inputs"]["lora_name"] for n in path if n["class_type"] == "LoraLoaderModelOnly"]
        lightning = settings["experts"][expert]["lightning"]
        assert loras_on_it == [*([models.hub_file(lightning["lora"])[1]] if lightning else []),
                               f"{preset}-{expert}.safetensors"]
        assert path[-1]["class_type"] == "ModelSamplingSD3" and path[-1]["inputs"]["shift"] == s.shift
        assert sampler["inputs"]["cfg"] == s.guidance[expert] and sampler["inputs"]["noise_seed"] == 7
    prompt = next(n for n in api.values() if n["_meta"]["title"] == "Prompt")
    assert prompt["inputs"]["text"] == "zorbix waves"
    if models.is_i2v(settings["model"]["task"]):
        assert next(n for n in api.values() if n["class_type"] == "LoadImage")["inputs"]["image"] == "zorbix.png"


def test_lightning_presets_sample_in_4_steps_without_guidance():
    api = workflow(run_of("wan22-i2v-lightning", "both"))
    assert {(n["inputs"]["steps"], n["inputs"]["cfg"]) for n in samplers(api).values()} == {(4, 1.0)}
    strengths = [n["inputs"]["strength_model"] for n in api.values() if n["_meta"]["title"].startswith("Lightning")]
    assert strengths == [1.0, 1.0]


def test_one_trained_expert_puts_its_lora_on_that_expert_only():
    api = workflow(run_of("wan22-t2v-vanilla", "low"))
    high, low = samplers(api)["high"], samplers(api)["low"]
    assert not any(n["class_type"] == "LoraLoaderModelOnly" for n in chain(api, high["id"]))
    assert [n["inputs"]["lora_name"] for n in chain(api, low["id"]) if n["class_type"] == "LoraLoaderModelOnly"] == [
        "wan22-t2v-vanilla-low.safetensors"]


def switch_by_table(steps: int, shift: float, boundary: float) -> int:
    """The switch step from ComfyUI's own recipe written out: a 1000-entry sigma table (model_sampling.py:256,
    sigma(k/1000) for k = 1..1000), the simple scheduler picking sigmas[-(1 + int(x * 1000 / steps))]
    (samplers.py:413-420); the high-noise expert runs while sigma >= boundary (Wan's boundary * 1000 timesteps)."""
    table = [shift * (k / 1000) / (1 + (shift - 1) * (k / 1000)) for k in range(1, 1001)]
    sigmas = [table[-(1 + int(x * (len(table) / steps)))] for x in range(steps)]
    return next((x for x, value in enumerate(sigmas) if value < boundary), steps)


@pytest.mark.parametrize(("steps", "shift", "boundary"), [(4, 5.0, 0.875), (4, 5.0, 0.9), (40, 12.0, 0.875),
                                                          (40, 5.0, 0.9), (20, 8.0, 0.875), (7, 3.0, 0.875)])
def test_switch_step_matches_comfyuis_sigmas(steps, shift, boundary):
    assert comfyui.switch_step(steps, shift, boundary) == switch_by_table(steps, shift, boundary)


def test_lightning_switch_matches_comfyuis_own_wan22_template():
    # comfyui-workflow-templates 0.1.94 video_wan2_2_14B_t2v.json: 4 steps at shift 5, high 0-2, low 2-4.
    assert comfyui.switch_step(4, 5.0, 0.875) == 2


def test_the_checks_catch_a_bad_workflow():
    api = workflow(run_of("wan21-i2v-480p", None))
    assert validate_api(api) == []
    ksampler = next(i for i, n in api.items() if n["class_type"] == "KSampler")
    loader = next(i for i, n in api.items() if n["class_type"] == "CLIPLoader")
    bad = {i: {**n, "inputs": dict(n["inputs"])} for i, n in api.items()}
    bad[ksampler]["inputs"]["cfg_scale"] = bad[ksampler]["inputs"].pop("cfg")
    bad[ksampler]["inputs"]["sampler_name"] = "unipc"
    bad[ksampler]["inputs"]["positive"] = [loader, 0]  # a CLIP where CONDITIONING goes
    bad[loader]["inputs"]["type"] = "wan2"
    problems = "\n".join(validate_api(bad))
    for word in ("has no input cfg_scale", "required input cfg missing", "'unipc'", "links CLIPLoader", "'wan2'"):
        assert word in problems
    ui = comfyui_ui.ui_workflow(api, {}, "x")
    ui["nodes"][0]["widgets_values"] = ui["nodes"][0]["widgets_values"][::-1]
    ui["links"][0][5] = "LATENT"
    assert len(validate_ui(ui, api)) >= 2
