"""The LoRA file musubi-tuner (30c658c4) saves after training a Wan DiT, written by hand (a test double: no torch).

What the real one holds, read from its source:
- networks/lora_wan.py + networks/lora.py: one module per nn.Linear inside each WanAttentionBlock (`blocks.<i>.`),
  except names matching lora_wan's exclude pattern; named `lora_unet_<module path, dots as _>` with
  `.lora_down.weight` [dim, in], `.lora_up.weight` [out, dim] and `.alpha` (a 0-d tensor);
- training/train_utils.py resolve_save_dtype: float32 without --save_precision/--full_bf16/--full_fp16;
- training/trainer_base.py save_model: the ss_* metadata (ss_base_model_version "wan", ss_network_module/dim/alpha
  as str(), ss_sd_model_name the --dit file's name), the modelspec.* keys of utils/sai_model_spec.py, and
  networks/lora.py save_weights' sshs_model_hash (utils/model_utils.py: sha256 of the data after the header).
The modules come from the DiT file here (the real one walks the model class built for --task): its 2-D `.weight`
tensors under `blocks.<i>.`, with the 1.3B file's `model.diffusion_model.` prefix stripped as load_wan_model does.
FAKE_MUSUBI_UNSTRIPPED=1 keeps the prefix in the module names: a LoRA named after the file's own keys, which no
loader that strips the prefix can apply (what a LoRA check must catch).
"""

import hashlib
import json
import os
import random
import re
import struct
import time
from pathlib import Path

PREFIX = "model.diffusion_model."
EXCLUDE = re.compile(r".*(patch_embedding|text_embedding|time_embedding|time_projection|norm|head).*")
BLOCK_LINEAR = re.compile(r"((?:model\.diffusion_model\.)?blocks\.\d+\..+)\.weight")
# The arguments the saved file depends on.
FLAGS = ("--dit", "--output_name", "--learning_rate", "--max_train_epochs", "--network_module", "--network_dim",
         "--network_alpha", "--mixed_precision", "--seed", "--min_timestep", "--max_timestep")
SPLIT = re.compile(r"^(.*?)(\d+)-of-(\d+)\.safetensors$")  # utils/safetensors_utils.get_split_weight_filenames


def header(path: Path) -> dict:
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(size))


def dit_files(dit: str) -> list[Path]:
    match = SPLIT.match(os.path.basename(dit))
    if not match:
        return [Path(dit)]
    prefix, count = os.path.basename(dit)[: match.start(2)], int(match[3])
    return [Path(dit).with_name(f"{prefix}{i:05d}-of-{count:05d}.safetensors") for i in range(1, count + 1)]


def linear_modules(dit: str) -> dict[str, list[int]]:
    """module path -> [out, in] of every nn.Linear musubi wraps in this DiT."""
    found, keep = {}, os.environ.get("FAKE_MUSUBI_UNSTRIPPED") == "1"
    for path in dit_files(dit):
        for key, entry in header(path).items():
            match = BLOCK_LINEAR.fullmatch(key if keep else key.removeprefix(PREFIX))
            if match and len(entry["shape"]) == 2 and not EXCLUDE.fullmatch(match[1]):
                found[match[1]] = entry["shape"]
    return found


def _floats(rng: random.Random, count: int, scale: float) -> bytes:
    return struct.pack(f"<{count}f", *(rng.gauss(0, scale) for _ in range(count)))


def write_safetensors(path: Path, tensors: dict[str, tuple[list[int], bytes]], metadata: dict[str, str]) -> None:
    """float32 tensors (shape, bytes) in the order given, as safetensors' save_file lays them out."""
    entries, offset = {}, 0
    for name, (shape, data) in tensors.items():
        entries[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as out:
        out.write(len(blob).to_bytes(8, "little") + blob)
        for _shape, data in tensors.values():
            out.write(data)


def lora_tensors(dit: str, dim: int, alpha: float, seed: str) -> dict[str, tuple[list[int], bytes]]:
    rng = random.Random(seed)  # another epoch, other weights: the sample double colours its videos by them
    tensors = {}
    for module, (out_features, in_features) in sorted(linear_modules(dit).items()):
        name = "lora_unet_" + module.replace(".", "_")
        tensors[f"{name}.alpha"] = ([], struct.pack("<f", alpha))
        tensors[f"{name}.lora_down.weight"] = ([dim, in_features], _floats(rng, dim * in_features, 0.1))
        tensors[f"{name}.lora_up.weight"] = ([out_features, dim], _floats(rng, out_features * dim, 0.01))
    return tensors


def metadata(args: dict, epoch: int, steps: int) -> dict[str, str]:
    """What save_model writes for these arguments (a subset of trainer_base.py's keys, the same spellings)."""
    dit = args["--dit"]
    data = {"ss_session_id": "1", "ss_training_started_at": str(time.time()), "ss_output_name": args["--output_name"],
            "ss_learning_rate": str(float(args["--learning_rate"])), "ss_num_epochs": args["--max_train_epochs"],
            "ss_base_model_version": "wan", "ss_network_module": args["--network_module"],
            "ss_network_dim": str(int(args["--network_dim"])), "ss_network_alpha": str(float(args["--network_alpha"])),
            "ss_mixed_precision": args["--mixed_precision"], "ss_seed": args["--seed"],
            "ss_sd_model_name": os.path.basename(dit) if os.path.exists(dit) else dit,
            "ss_training_finished_at": str(time.time()), "ss_steps": str(steps), "ss_epoch": str(epoch),
            "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "wan2.1/lora",
            "modelspec.implementation": "https://github.com/Wan-Video/Wan2.1", "modelspec.title": args["--output_name"],
            "modelspec.resolution": "1280x720", "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.get("--min_timestep") or args.get("--max_timestep"):
        data["modelspec.timestep_range"] = f"{args.get('--min_timestep') or 0},{args.get('--max_timestep') or 1000}"
    return data


def save(path: Path, args: dict, epoch: int, steps: int) -> None:
    tensors = lora_tensors(args["--dit"], int(args["--network_dim"]), float(args["--network_alpha"]),
                           f"{args['--output_name']}:{steps}")  # steps count on across a resume, epochs restart
    meta = metadata(args, epoch, steps)
    meta["sshs_model_hash"] = hashlib.sha256(b"".join(data for _, data in tensors.values())).hexdigest()
    write_safetensors(path, tensors, meta)
