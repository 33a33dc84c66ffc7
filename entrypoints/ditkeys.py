"""A DiT as musubi's generator can merge a LoRA into: a copy without the `model.diffusion_model.` key prefix.

musubi-tuner's wan_generate_video.py (commit 30c658c4) merges each LoRA while it reads the DiT file: the hook in
utils/lora_utils.py (load_safetensors_with_lora_and_fp8) names the LoRA module of every file key
`lora_unet_<key without .weight, dots as underscores>`, and only after that does wan/modules/model.py
(load_wan_model) strip `model.diffusion_model.` ("1.3B model has this prefix"). A LoRA trained by musubi is named
after the bare module names, so with a prefixed file not one key matches: musubi logs `Warning: not all LoRA keys
are used` and samples the base model. Training reads the same file and strips the prefix before it builds its
network, so it is not affected.

This step reads only the safetensors header(s). When a key carries the prefix it writes the same tensors, byte for
byte, under the bare names (shards as shards), each file as `<name>.partial` renamed once all are whole; when none
does it writes nothing, and the sample steps load the DiT as it is (the entrypoint swaps in the copy only where
one exists). Exit codes: 0 done, 2 a file that cannot be read or renamed this way (one `error:` line).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from pathlib import Path

from lora_gym_entrypoint.merge import DIT_PREFIX, MergeError, _copy_range, _fsync_dir, _read_header, shards_of


def prefixed(dits: list[Path]) -> int:
    """How many tensor names of the DiT (all its shards) start with the prefix; reads the headers only."""
    return sum(key.startswith(DIT_PREFIX) for dit in dits for key in _read_header(dit, "DiT").tensors)


def _bare_header(path: Path) -> tuple[bytes, int, int]:
    """(the header with bare names and its length prefix, where the source's data starts, its data size)."""
    header = _read_header(path, "DiT")
    renamed = {key.removeprefix(DIT_PREFIX): entry for key, entry in header.tensors.items()}
    if len(renamed) != len(header.tensors):
        clash = sorted(k for k in header.tensors if k.startswith(DIT_PREFIX) and k.removeprefix(DIT_PREFIX) in
                       header.tensors)
        raise MergeError(f"DiT {path} holds {clash[0]} and {clash[0].removeprefix(DIT_PREFIX)} both: a key would "
                         "name two tensors without the prefix")
    metadata = {**header.metadata, "lora_gym.dit_keys": f"removed the {DIT_PREFIX} prefix"}
    blob = json.dumps({"__metadata__": metadata, **renamed}, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the 8-byte alignment the safetensors library writes
    size = max((entry["data_offsets"][1] for entry in header.tensors.values()), default=0)
    return struct.pack("<Q", len(blob)) + blob, header.data_start, size


def _write(source: Path, partial: Path) -> None:
    # Only names change, so the data offsets hold as they are: the data region is copied whole.
    header, start, size = _bare_header(source)
    with open(partial, "wb") as out, open(source, "rb") as src:
        out.write(header)
        _copy_range(src, out, start, size)
        out.flush()
        os.fsync(out.fileno())


def bare_copy(dit: Path, output: Path) -> int:
    """Writes `output` (and its sibling shards) when the DiT's keys carry the prefix; the count of such keys."""
    dits = shards_of(Path(dit))
    for shard in dits:
        if not shard.is_file():
            raise MergeError(f"DiT file not found: {shard}")
    count = prefixed(dits)
    if not count:
        return 0
    outputs = [output] if len(dits) == 1 else [output.with_name(shard.name) for shard in dits]
    output.parent.mkdir(parents=True, exist_ok=True)
    partials = [out.with_name(out.name + ".partial") for out in outputs]
    try:
        for shard, partial in zip(dits, partials, strict=True):
            _write(shard, partial)
        for partial, out in zip(partials, outputs, strict=True):
            os.replace(partial, out)
    except BaseException:
        for partial in partials:
            partial.unlink(missing_ok=True)
        raise
    _fsync_dir(output.parent)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_gym_entrypoint.ditkeys",
                                     description="Copy a Wan DiT without the model.diffusion_model. key prefix.")
    parser.add_argument("--dit", type=Path, required=True, help="DiT .safetensors, or the first of its shards")
    parser.add_argument("--output", type=Path, required=True, help="where the bare-key copy goes, if one is needed")
    args = parser.parse_args(argv)
    try:
        count = bare_copy(args.dit, args.output)
    except (MergeError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if count:
        print(f"dit-keys: {count} keys of {args.dit} start with {DIT_PREFIX}, which musubi's generator matches no "
              f"LoRA key against: the samples load {args.output}, the same tensors under bare names", flush=True)
    else:
        print(f"dit-keys: no key of {args.dit} starts with {DIT_PREFIX}: the samples load it as it is", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
