"""How musubi-tuner's generator (commit 30c658c4) merges a LoRA into the DiT it loads, for the generator double.

Read in musubi's source: wan_generate_video.py load_dit_model hands the LoRA state dicts to
utils/lora_utils.py `load_safetensors_with_lora_and_fp8`, whose hook runs on each key of the DiT FILE as read,
before wan/modules/model.py load_wan_model drops a `model.diffusion_model.` prefix ("1.3B model has this
prefix"). For a key ending `.weight` it looks up `lora_unet_<key without .weight, dots as underscores>` and merges
that module's lora_down/lora_up (scaled by its alpha) when both are there, removing them from the LoRA's key set.
Keys left over are then only logged, through logging.basicConfig's default format on stderr:
`WARNING:musubi_tuner.utils.lora_utils:Warning: not all LoRA keys are used: <keys>`, and generation goes on with
whatever landed. A LoRA trained by musubi is named after the bare module names, so a prefixed file takes none.

Standard library only (the test image has no torch). A stand-in DiT or LoRA of a few bytes, not a safetensors
file, cannot be read this way: merge() then returns None and the generator double colours by the files as a whole.
"""

import hashlib
import json
import re
import struct
import sys
from pathlib import Path

WARNING = "WARNING:musubi_tuner.utils.lora_utils:Warning: not all LoRA keys are used: "


def read_header(path) -> tuple[dict, int] | None:
    """({name: entry}, where the data starts) of a safetensors file, or None when it is not one."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            data = json.loads(handle.read(size)) if size < 100 << 20 else None
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    data.pop("__metadata__", None)
    return data, 8 + size


def shards(path: str) -> list[str]:
    """utils/safetensors_utils.py get_split_weight_filenames: `...-00001-of-0000N.safetensors` loads N files."""
    match = re.match(r"^(.*?)(\d+)-of-(\d+)\.safetensors$", Path(path).name)
    if not match:
        return [path]
    count = int(match.group(3))
    return [str(Path(path).with_name(f"{Path(path).name[:match.start(2)]}{i:05d}-of-{count:05d}.safetensors"))
            for i in range(1, count + 1)]


def _data(path: str, start: int, entry: dict) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(start + entry["data_offsets"][0])
        return handle.read(entry["data_offsets"][1] - entry["data_offsets"][0])


def merge(dit: str, loras: list[str]) -> bytes | None:
    """A digest of the model the generator renders: the DiT file's keys plus the LoRA data merged into them.
    Prints musubi's warning for LoRA keys that land nowhere. None when the DiT or a LoRA is a stand-in."""
    files = [read_header(shard) for shard in shards(dit)]
    read = [(lora, read_header(lora)) for lora in loras]
    if not all(files) or not all(header for _, header in read):
        return None
    digest = hashlib.sha256(json.dumps(sorted(key for header, _ in files for key in header)).encode())
    weights = [key for header, _ in files for key in header if key.endswith(".weight")]
    for lora, (header, start) in read:
        left = set(header)
        for key in weights:
            name = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
            down, up, alpha = f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"
            if down in left and up in left:
                for part in (down, up, alpha):
                    if part in left:
                        left.discard(part)
                        digest.update(_data(lora, start, header[part]))
        if left:
            print(WARNING + ", ".join(sorted(left)), file=sys.stderr, flush=True)
    return digest.digest()
