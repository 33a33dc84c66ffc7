"""Lightning merge: bake a LoRA (e.g. lightx2v's Wan2.2 4-step LoRA) into a Wan DiT before training.

The merged file keeps the DiT's key names, dtypes and shapes, so musubi-tuner loads it like the original.
Every LoRA key must land on a DiT tensor: a LoRA that does not fit is an error, never a silent no-op
(the reference pipeline trained the vanilla model when its merge quietly failed).

torch and safetensors are imported inside functions so the entrypoint package imports without them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# One rule for a DiT's shard names (`<stem>-00001-of-0000N.safetensors`, musubi-tuner's, which an image with a
# layer cap uses for big DiTs), shared with the key copy (ditkeys.py) and the LoRA check.
from launcher.loracheck import shards as shards_of

DIT_PREFIX = "model.diffusion_model."
# Longest first, so "model.diffusion_model." is not mistaken for "diffusion_model." plus junk.
LORA_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
# LoRA key suffix -> its role in the module. PEFT's lora_A/lora_B are kohya's lora_down/lora_up.
SUFFIXES = {
    ".lora_down.weight": "down", ".lora_A.weight": "down",
    ".lora_up.weight": "up", ".lora_B.weight": "up",
    ".alpha": "alpha", ".diff": "diff", ".diff_b": "diff_b",
}
FIX = "this LoRA does not fit this DiT: check the preset's lightning.lora matches the expert's dit"
COPY_CHUNK = 64 << 20  # untouched tensors are copied in chunks this big, so memory stays flat
# DiT dtypes a delta can be added to. fp8 is left out on purpose: scaled-fp8 DiTs need their scales.
MERGEABLE = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


class MergeError(Exception):
    """A merge that cannot be done; the message is one line meant for the user."""


@dataclass(frozen=True)
class MergeReport:
    merged_modules: int
    tensors_written: int
    output: Path


@dataclass(frozen=True)
class _Header:
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "data_offsets"} as stored in the file
    metadata: dict[str, str]
    data_start: int  # file offset where the data region (and data_offsets' zero) begins


def _read_header(path: Path, what: str) -> _Header:
    # Parsed by hand (it is tiny) so shapes are checked before any tensor is read, and so a
    # half-downloaded 28 GB file is caught up front instead of as a crash at 90%.
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100 << 20:  # no real header is this big: not a safetensors file at all
                raise ValueError("header length out of range")
            tensors = json.loads(fh.read(size))
        metadata = tensors.pop("__metadata__", None) or {}
        end = max((entry["data_offsets"][1] for entry in tensors.values()), default=0)
    except (struct.error, ValueError, AttributeError, LookupError, TypeError) as exc:
        raise MergeError(f"{what} {path} is not a safetensors file ({type(exc).__name__}: {exc})") from None
    if 8 + size + end > path.stat().st_size:
        raise MergeError(f"{what} {path} is truncated (incomplete download?): delete it and fetch it again")
    return _Header(tensors, metadata, 8 + size)


def _fail(keys: list[str], what: str) -> MergeError:
    more = ", ..." if len(keys) > 3 else ""
    return MergeError(f"{len(keys)} LoRA key(s) {what} (e.g. {', '.join(keys[:3])}{more}); {FIX}")


def _split_key(key: str) -> tuple[str, str | None]:
    """`diffusion_model.blocks.0.self_attn.q.lora_up.weight` -> (`blocks.0.self_attn.q`, "up")."""
    for prefix in LORA_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    for suffix, role in SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return key, None


def _group_lora(lora: _Header) -> dict[str, dict[str, str]]:
    """Groups LoRA keys by module: {module: {role: original key}}; malformed layouts are errors."""
    modules: dict[str, dict[str, str]] = {}
    unknown, duplicate = [], []
    for key in lora.tensors:
        module, role = _split_key(key)
        if role is None:
            unknown.append(key)
        elif role in modules.setdefault(module, {}):
            duplicate.append(key)
        else:
            modules[module][role] = key
    if unknown:
        raise _fail(unknown, f"have an unknown suffix (known: {', '.join(SUFFIXES)})")
    if duplicate:
        raise _fail(duplicate, "name a module twice (under two prefixes or as both lora_A and lora_down)")
    # A down without its up (or an alpha alone) would merge nothing; say so instead of skipping it.
    broken = [key for parts in modules.values()
              if ("down" in parts) != ("up" in parts) or ("alpha" in parts and "down" not in parts)
              for key in parts.values()]
    if broken:
        raise _fail(broken, "belong to a module without both lora_down/lora_A and lora_up/lora_B")
    odd_alpha = [parts["alpha"] for parts in modules.values()
                 if "alpha" in parts and math.prod(lora.tensors[parts["alpha"]]["shape"]) != 1]
    if odd_alpha:
        raise _fail(odd_alpha, "are an alpha that is not a single number")
    return modules


def _delta_shape(kind: str, parts: dict[str, str], lora: _Header) -> list[int] | None:
    """The shape the delta of this kind will have, or None when down/up cannot multiply."""
    if kind != "lora":
        return list(lora.tensors[parts[kind]]["shape"])
    down, up = lora.tensors[parts["down"]]["shape"], lora.tensors[parts["up"]]["shape"]
    # Linear: up (out, r) @ down (r, in). Conv: down carries the kernel, up is (out, r, 1, ...).
    if len(up) < 2 or not down or up[1] != down[0] or any(d != 1 for d in up[2:]):
        return None
    return [up[0], *down[1:]]


def _plan(modules: dict[str, dict[str, str]], lora: _Header, dit: _Header) -> dict[str, list]:
    """Maps each DiT tensor to the (kind, parts) deltas it receives, after checking every one fits."""
    prefix = DIT_PREFIX if any(key.startswith(DIT_PREFIX) for key in dit.tensors) else ""
    plan: dict[str, list] = {}
    unmatched, mismatched = [], []
    for module, parts in modules.items():
        kinds = ["lora"] if "down" in parts else []
        kinds += [kind for kind in ("diff", "diff_b") if kind in parts]
        for kind in kinds:
            target = prefix + module + (".bias" if kind == "diff_b" else ".weight")
            roles = ("down", "up", "alpha") if kind == "lora" else (kind,)
            keys = [parts[role] for role in roles if role in parts]
            if target not in dit.tensors:
                unmatched += keys
                continue
            shape, want = _delta_shape(kind, parts, lora), list(dit.tensors[target]["shape"])
            if shape != want:
                mismatched.append(f"{keys[0]} gives {shape or 'no valid up @ down'} but {target} is {want}")
            plan.setdefault(target, []).append((kind, parts))
    if unmatched:
        raise _fail(unmatched, f"match no tensor in the DiT (DiT key prefix: {prefix or 'none'!r})")
    if mismatched:
        raise _fail(mismatched, "do not match their DiT tensor's shape")
    odd = sorted({dit.tensors[key]["dtype"] for key in plan} - set(MERGEABLE))
    if odd:
        raise MergeError(f"cannot merge into a {'/'.join(odd)} DiT: point the preset's dit at fp16/bf16")
    return plan


def _merged(tensor, deltas: list, lora_file, strength: float, name: str):
    """Adds every delta to one DiT tensor in float32, then casts back to the tensor's own dtype."""
    import torch

    weight = tensor.float()
    for kind, parts in deltas:
        if kind == "lora":
            down = lora_file.get_tensor(parts["down"]).float()
            up = lora_file.get_tensor(parts["up"]).float()
            scale = lora_file.get_tensor(parts["alpha"]).item() / down.shape[0] if "alpha" in parts else 1.0
            weight += strength * scale * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
        else:
            weight += strength * lora_file.get_tensor(parts[kind]).float().reshape(weight.shape)
    out = weight.to(tensor.dtype)
    # fp16 overflows to inf quietly; a DiT with inf in it trains to NaN hours later.
    if not torch.isfinite(out).all():
        raise MergeError(f"merging into {name} gives inf/NaN in {tensor.dtype}: is strength {strength} sane?")
    return out


def _raw(tensor) -> memoryview:
    # ctypes gives a zero-copy view of a contiguous tensor's bytes without numpy (not in every image).
    array = (ctypes.c_char * (tensor.numel() * tensor.element_size())).from_address(tensor.data_ptr())
    array.owner = tensor  # the view must keep the tensor alive, or it reads freed memory
    return memoryview(array).cast("B")


def _read_tensor(src, dit: _Header, key: str):
    # Plain reads rather than safe_open's mmap: mapped pages of a 28 GB file pile up in the process's
    # RSS until the file is closed, while this holds only the one tensor being merged.
    import torch

    entry = dit.tensors[key]
    tensor = torch.empty(entry["shape"], dtype=getattr(torch, MERGEABLE[entry["dtype"]]))
    src.seek(dit.data_start + entry["data_offsets"][0])
    if src.readinto(_raw(tensor)) != tensor.numel() * tensor.element_size():
        raise MergeError(f"DiT file ended early while reading {key} (was it changed during the merge?)")
    return tensor


def _copy_range(src, out, start: int, size: int) -> None:
    # Tensors the LoRA does not touch are copied byte for byte: bit-exact, and no torch round trip.
    src.seek(start)
    while size > 0:
        chunk = src.read(min(size, COPY_CHUNK))
        if not chunk:
            raise MergeError("DiT file ended early while copying (was it changed during the merge?)")
        out.write(chunk)
        size -= len(chunk)


def _layout(dit: _Header, metadata: dict[str, str]) -> tuple[list[str], bytes, int]:
    """Tensor order (as in the input), the output header with its length prefix, and data size."""
    order = sorted(dit.tensors, key=lambda key: dit.tensors[key]["data_offsets"][0])
    header: dict = {"__metadata__": metadata}
    offset = 0
    for key in order:
        entry = dit.tensors[key]
        size = entry["data_offsets"][1] - entry["data_offsets"][0]
        header[key] = {**entry, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # same 8-byte alignment padding the safetensors library writes
    return order, struct.pack("<Q", len(blob)) + blob, offset


def _stream(dit_path: Path, dit: _Header, plan: dict, lora_path: Path, strength: float,
            partial: Path, metadata: dict[str, str], progress: Callable[[int, int], None] | None) -> None:
    # Hand-written writer: safetensors' save_file needs every tensor in memory at once (~28 GB here),
    # while this writes the header first (sizes never change) and then one tensor at a time.
    from safetensors import safe_open  # the LoRA is small, so its mmap is fine

    order, header, total = _layout(dit, metadata)
    if shutil.disk_usage(partial.parent).free < len(header) + total:
        raise MergeError(f"not enough free disk space in {partial.parent} for {total / 1e9:.1f} GB")
    done = 0
    with (open(partial, "wb") as out, open(dit_path, "rb") as src,
          safe_open(lora_path, framework="pt") as lora_file):
        out.write(header)
        for key in order:
            start, end = dit.tensors[key]["data_offsets"]
            if key in plan:
                merged = _merged(_read_tensor(src, dit, key), plan[key], lora_file, strength, key)
                out.write(_raw(merged))  # same dtype and shape as the input, so same byte count
            else:
                _copy_range(src, out, dit.data_start + start, end - start)
            done += end - start
            if progress:
                progress(done, total)
        out.flush()
        os.fsync(out.fileno())


def _check_inputs(dit: Path, lora: Path, output: Path, strength: float, overwrite: bool) -> None:
    for what, path in (("DiT", dit), ("LoRA", lora)):
        if not path.is_file():
            raise MergeError(f"{what} file not found: {path}")
    if not math.isfinite(strength):
        raise MergeError(f"strength must be a finite number, got {strength}")
    if output.resolve() in (dit.resolve(), lora.resolve()):
        raise MergeError(f"output {output} would overwrite an input; choose another path")
    if output.exists() and not overwrite:
        raise MergeError(f"output {output} already exists; delete it or pass overwrite=True / --overwrite")


def merge_lora(dit: Path, lora: Path, strength: float, output: Path, *,
               progress: Callable[[int, int], None] | None = None, overwrite: bool = False) -> MergeReport:
    """Writes `output`: the DiT with `strength` x the LoRA merged in; raises MergeError if it does not fit.

    A DiT given as its first shard is read across all its shards and written as the same shards beside
    `output` (which is then the first output shard's name). `progress(done, total)` is called after each
    tensor with bytes written so far and total data bytes. Files appear atomically: each is written as
    `<name>.partial`, fsynced, and all are renamed once every one is complete.
    """
    dit, lora, output = Path(dit), Path(lora), Path(output)
    dits = shards_of(dit)
    outputs = [output] if len(dits) == 1 else [output.with_name(shard.name) for shard in dits]
    for shard, out in zip(dits, outputs, strict=True):
        _check_inputs(shard, lora, out, strength, overwrite)
    headers, lora_header = [_read_header(shard, "DiT") for shard in dits], _read_header(lora, "LoRA")
    modules = _group_lora(lora_header)
    whole = _Header({k: v for h in headers for k, v in h.tensors.items()}, headers[0].metadata, 0)
    plan = _plan(modules, lora_header, whole)  # all checks happen before a byte is written
    output.parent.mkdir(parents=True, exist_ok=True)
    partials = [out.with_name(out.name + ".partial") for out in outputs]
    total = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in whole.tensors.values())
    try:
        done = 0
        for shard, header, partial in zip(dits, headers, partials, strict=True):
            # Provenance in the output itself, so a merged file can always be traced back to its LoRA.
            metadata = {**header.metadata, "lora_gym.merged_lora": lora.name,
                        "lora_gym.merged_strength": repr(float(strength)),
                        "lora_gym.merged_modules": str(len(modules))}
            subplan = {key: deltas for key, deltas in plan.items() if key in header.tensors}
            offset = done
            _stream(shard, header, subplan, lora, float(strength), partial, metadata,
                    progress and (lambda d, _t, offset=offset: progress(offset + d, total)))
            done += sum(e["data_offsets"][1] - e["data_offsets"][0] for e in header.tensors.values())
        for partial, out in zip(partials, outputs, strict=True):
            os.replace(partial, out)
    except BaseException:  # includes Ctrl-C: a .partial left behind would only confuse the next run
        for partial in partials:
            partial.unlink(missing_ok=True)
        raise
    _fsync_dir(output.parent)
    return MergeReport(merged_modules=len(modules), tensors_written=len(whole.tensors), output=output)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not possible on every OS/filesystem, and not worth failing over.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _progress_printer() -> Callable[[int, int], None]:
    """Prints a plain line every 5% (logs, not a TTY, so no carriage-return progress bars)."""
    last = -1

    def report(done: int, total: int) -> None:
        nonlocal last
        step = done * 20 // max(total, 1)
        if step > last:
            last = step
            print(f"merge: {step * 5:3d}% ({done / 1e9:.2f} / {total / 1e9:.2f} GB)", flush=True)

    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_gym_entrypoint.merge",
                                     description="Merge a LoRA into a Wan DiT safetensors file.")
    parser.add_argument("--dit", type=Path, required=True,
                        help="Wan DiT .safetensors (fp16 or bf16), or the first of its -0000K-of-0000N shards")
    parser.add_argument("--lora", type=Path, required=True, help="LoRA .safetensors to merge in")
    parser.add_argument("--strength", type=float, required=True, help="multiplier on the LoRA delta")
    parser.add_argument("--output", type=Path, required=True, help="merged DiT to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    try:
        report = merge_lora(args.dit, args.lora, args.strength, args.output,
                            progress=_progress_printer(), overwrite=args.overwrite)
    except MergeError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: the merge needs torch and safetensors ({exc})", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permissions: still one line, and the .partial is already gone
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"merged {report.merged_modules} LoRA modules at strength {args.strength:g}; "
          f"wrote {report.tensors_written} tensors to {report.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
