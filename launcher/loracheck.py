"""Does every key of a LoRA land on its DiT? A musubi-tuner LoRA checked against a Wan DiT, from headers only.

What musubi-tuner writes (commit 30c658c4, the one launcher/contract pins):
- networks/lora_wan.py: LoRA modules for every nn.Linear inside a `WanAttentionBlock`, except names matching
  `.*(patch_embedding|text_embedding|time_embedding|time_projection|norm|head).*`, under the prefix `lora_unet`;
- networks/lora.py (LoRANetwork.create_modules): a module's name is `lora_unet_<module path, dots as _>`, and
  its tensors are `<name>.lora_down.weight` [dim, in], `<name>.lora_up.weight` [out, dim] and `<name>.alpha` (a
  scalar), for a DiT weight [out, in];
- training/trainer_base.py: metadata `ss_network_module`, `ss_network_dim`, `ss_network_alpha`,
  `ss_base_model_version` ("wan", the architecture only) and `ss_sd_model_name` (the --dit file's name only).
And how it is applied: utils/lora_utils.py (load_safetensors_with_lora_and_fp8) turns each DiT key `<k>.weight`
into `lora_unet_<k with _>` and skips, silently, a module without both lora_down and lora_up; a LoRA module
that names no DiT key is never used. wan/modules/model.py strips the 1.3B file's `model.diffusion_model.`
prefix (it trains on the bare names), so the check compares against the bare names too.

Only the safetensors headers are read (8-byte length + JSON), and the alpha scalars: fast on a 28 GB DiT.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

DIT_PREFIX = "model.diffusion_model."  # the 1.3B file's keys (wan/modules/model.py, load_wan_model)
LORA_PREFIX = "lora_unet_"
ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
LABELS = {role: suffix.removesuffix(".weight") for suffix, role in ROLES.items()}  # "down" -> "lora_down"
# lora_wan.py's default exclude pattern; modules of a WanAttentionBlock are named blocks.<i>.<child>.
EXCLUDE = re.compile(r".*(patch_embedding|text_embedding|time_embedding|time_projection|norm|head).*")
IN_BLOCK = re.compile(r"blocks\.\d+\..+")
# musubi's get_split_weight_filenames (utils/safetensors_utils.py): a DiT stored as shards, named by any of them.
SPLIT = re.compile(r"^(.*?)(\d+)-of-(\d+)\.safetensors$")
SCALARS = {"F32": ("<f", 4), "F64": ("<d", 8), "F16": ("<e", 2)}
EXAMPLES = 3


class NotSafetensors(ValueError):
    """A file that is not a whole safetensors file; the message names it."""


@dataclass(frozen=True)
class Header:
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict[str, str]
    data_start: int


def read_header(path: str | Path, what: str = "file") -> Header:
    """The header of a whole safetensors file; NotSafetensors for anything else (a cut file included)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 100 << 20:
                raise ValueError("header length out of range")
            tensors = json.loads(handle.read(size))
        metadata = tensors.pop("__metadata__", None) or {}
        end = max((entry["data_offsets"][1] for entry in tensors.values()), default=0)
        whole = path.stat().st_size == 8 + size + end
    except (OSError, struct.error, ValueError, AttributeError, LookupError, TypeError) as exc:
        raise NotSafetensors(f"the {what} {path} is not a readable safetensors file ({type(exc).__name__}: "
                             f"{exc})") from None
    if not whole:
        raise NotSafetensors(f"the {what} {path} is cut short or has trailing bytes: it is not a whole file")
    return Header(tensors, metadata, 8 + size)


def shards(path: str | Path) -> list[Path]:
    """Every shard of a DiT split as musubi-tuner names it (`<stem>-00001-of-0000N.safetensors`; any shard's
    name gives all of them), else just `path`."""
    path = Path(path)
    match = SPLIT.match(path.name)
    if not match:
        return [path]
    prefix, count = path.name[: match.start(2)], int(match[3])
    return [path.with_name(f"{prefix}{i:05d}-of-{count:05d}.safetensors") for i in range(1, count + 1)]


def dit_weights(path: str | Path) -> dict[str, list[int]]:
    """Every `.weight` of the DiT (all its shards) by its bare name -> shape."""
    found = {}
    for shard in shards(path):
        for key, entry in read_header(shard, "DiT").tensors.items():
            if key.endswith(".weight"):
                found[key.removeprefix(DIT_PREFIX)] = list(entry["shape"])
    return found


def lora_name(dit_key: str) -> str:
    """The LoRA module musubi's generator applies to a DiT weight (lora_utils.py's weight_hook_func)."""
    return LORA_PREFIX + dit_key.removesuffix(".weight").replace(".", "_")


def trained(weights: Mapping[str, list[int]]) -> set[str]:
    """The LoRA modules musubi creates for this DiT: its nn.Linear weights (2-D) inside the attention blocks."""
    modules = {key.removesuffix(".weight"): shape for key, shape in weights.items()}
    return {lora_name(module) for module, shape in modules.items()
            if len(shape) == 2 and IN_BLOCK.fullmatch(module) and not EXCLUDE.fullmatch(module)}


@dataclass(frozen=True)
class Want:
    """What the plan asked for: the network and the metadata each LoRA file must carry."""

    network_dim: int
    network_alpha: float
    network_module: str
    metadata: dict[str, str] = field(default_factory=dict)


def _examples(items: list[str]) -> str:
    return ", ".join(items[:EXAMPLES]) + (", ..." if len(items) > EXAMPLES else "")


def _group(header: Header) -> tuple[dict[str, dict[str, str]], list[str]]:
    """{module: {role: key}} as musubi reads a LoRA (create_network_from_weights: `key.split(".")[0]`), and the
    keys that are no LoRA tensor at all."""
    modules: dict[str, dict[str, str]] = {}
    odd = []
    for key in header.tensors:
        module, _, rest = key.partition(".")
        if rest in ROLES:
            modules.setdefault(module, {})[ROLES[rest]] = key
        else:
            odd.append(key)
    return modules, sorted(odd)


def _scalar(handle, header: Header, key: str) -> float | None:
    entry = header.tensors[key]
    start, end = entry["data_offsets"]
    handle.seek(header.data_start + start)
    data = handle.read(end - start)
    if entry["dtype"] == "BF16" and len(data) == 2:  # the upper half of a float32
        return struct.unpack("<f", b"\0\0" + data)[0]
    fmt, size = SCALARS.get(entry["dtype"], ("", 0))
    return struct.unpack(fmt, data)[0] if size and len(data) == size else None


def _shape_problems(modules, header: Header, dit: Mapping[str, list[int]] | None) -> tuple[list[str], list[str]]:
    """(modules that name no DiT weight, modules whose down/up do not make that weight's shape)."""
    by_name = {lora_name(key): (key, shape) for key, shape in dit.items()} if dit is not None else {}
    unmatched, misfit = [], []
    for module, parts in sorted(modules.items()):
        if dit is not None and module not in by_name:
            unmatched.append(module)
            continue
        if "down" not in parts or "up" not in parts:
            continue
        down, up = header.tensors[parts["down"]]["shape"], header.tensors[parts["up"]]["shape"]
        key, want = by_name.get(module, (None, None))
        fits = len(down) == 2 and len(up) == 2 and up[1] == down[0]
        if fits and want is not None:
            fits = len(want) == 2 and [up[0], down[1]] == want
        if not fits:
            misfit.append(f"{module} has lora_down {down} and lora_up {up}"
                          + (f" for {key} {want}" if key else ""))
    return unmatched, misfit


def _network_problems(modules, header: Header, path: Path, want: Want) -> list[str]:
    ranks = sorted(m for m, p in modules.items() if "down" in p and header.tensors[p["down"]]["shape"][:1]
                   != [want.network_dim])
    alphas = []
    with path.open("rb") as handle:
        for module, parts in sorted(modules.items()):
            if "alpha" in parts:
                value = _scalar(handle, header, parts["alpha"])
                if value is None or abs(value - want.network_alpha) > 1e-2 * max(1.0, abs(want.network_alpha)):
                    alphas.append(f"{module} ({value})")
    problems = [f"{len(ranks)} module(s) have another rank than network_dim {want.network_dim} "
                f"(e.g. {_examples(ranks)})"] if ranks else []
    if alphas:
        problems.append(f"{len(alphas)} module(s) have another alpha than network_alpha {want.network_alpha:g} "
                        f"(e.g. {_examples(alphas)})")
    return problems


def _metadata_problems(metadata: Mapping[str, str], want: Want) -> list[str]:
    wrong = []
    for key, value, same in (("ss_network_module", want.network_module, str.__eq__),
                             ("ss_network_dim", want.network_dim, lambda a, b: _number(a) == b),
                             ("ss_network_alpha", want.network_alpha, lambda a, b: _number(a) == b),
                             *((k, v, str.__eq__) for k, v in want.metadata.items())):
        if key not in metadata:
            wrong.append(f"no {key}")
        elif not same(metadata[key], value):
            wrong.append(f"{key}={metadata[key]!r} (the plan: {value!r})")
    return [f"its metadata has {_examples(wrong)}"] if wrong else []


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def check_file(path: str | Path, want: Want, dit: Mapping[str, list[int]] | None) -> dict:
    """{"path", "modules", "keys", "problems"} for one LoRA file; with `dit` None the DiT is not here, and only
    what the LoRA says by itself (complete modules, rank, alpha, metadata) is checked."""
    path = Path(path)
    result = {"path": path.name, "modules": 0, "keys": 0, "problems": []}
    try:
        header = read_header(path, "LoRA")
    except NotSafetensors as exc:
        result["problems"].append(str(exc))
        return result
    modules, odd = _group(header)
    result.update(modules=len(modules), keys=len(header.tensors))
    problems = result["problems"]
    if odd:
        problems.append(f"{len(odd)} key(s) are not <module>.lora_down.weight, .lora_up.weight or .alpha "
                        f"(e.g. {_examples(odd)})")
    if not modules:
        problems.append("it has no LoRA module (no <name>.lora_down.weight / .lora_up.weight / .alpha keys)")
    broken = [f"{m} without {'/'.join(label for role, label in LABELS.items() if role not in parts)}"
              for m, parts in sorted(modules.items()) if len(parts) < len(LABELS)]
    if broken:
        problems.append(f"{len(broken)} module(s) miss keys (e.g. {_examples(broken)})")
    unmatched, misfit = _shape_problems(modules, header, dit)
    if unmatched:
        problems.append(f"{len(unmatched)} of {len(modules)} module(s) name no weight of the DiT (e.g. "
                        f"{_examples(unmatched)}; musubi names them {LORA_PREFIX}<DiT key without "
                        f"{DIT_PREFIX!r}, dots as _>)")
    if misfit:
        problems.append(f"{len(misfit)} module(s) do not fit their DiT weight (e.g. {_examples(misfit)})")
    targets = trained(dit) if dit is not None else set()
    if missing := sorted(targets - set(modules)):
        problems.append(f"{len(missing)} of the DiT's {len(targets)} trained module(s) have no LoRA module "
                        f"(e.g. {_examples(missing)})")
    problems += _network_problems(modules, header, path, want) + _metadata_problems(header.metadata, want)
    return result


@dataclass
class Outcome:
    """One training's check, as run.json records it (`lora_check.<step>`)."""

    status: str  # "passed" or "failed"
    dit: str
    dit_checked: bool  # False: the DiT was not here, so names and shapes were not checked
    output_name: str
    want: dict
    files: list[dict]
    reason: str | None = None
    dit_read: str | None = None  # the DiT file read for the check (where the training read it, or a copy)

    def to_json(self) -> dict:
        return asdict(self)


def is_lora_file(file_name: str, name: str) -> bool:
    """Whether a training named `name` writes this file: `<name>.safetensors` or a `<name>-<epoch>` checkpoint."""
    return re.fullmatch(rf"{re.escape(name)}(-\d{{6}})?\.safetensors", file_name) is not None


def lora_files(folder: str | Path, name: str) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if is_lora_file(p.name, name)) if folder.is_dir() else []


def check_training(files: Iterable[Path], dit_path: str, want: Want, output_name: str,
                   dit_here: Path | None = None) -> Outcome:
    """Checks every file against the DiT at `dit_here` (default `dit_path`, where the training read it)."""
    files = list(files)
    dit, dit_problem = None, None
    local = Path(dit_here or dit_path)
    if local.is_file():
        try:
            dit = dit_weights(local)
        except NotSafetensors as exc:
            dit_problem = str(exc)
    results = [check_file(path, want, dit) for path in files]
    failed = [r for r in results if r["problems"]]
    reason = dit_problem or (f"no LoRA file named {output_name}.safetensors" if not files else None)
    if failed and not reason:
        first = failed[0]
        more = f" ({len(failed)} of {len(results)} LoRA files fail)" if len(results) > 1 else ""
        reason = f"{first['path']}: {'; '.join(first['problems'])}{more}"
    return Outcome("failed" if reason else "passed", dit_path, dit is not None, output_name, asdict(want),
                   results, reason, str(local) if dit is not None else None)


def recheck(run_dir: str | Path, dits: Iterable[str | Path] = ()) -> dict[str, Outcome]:
    """The checks the run folder's run.json recorded, run again on its files: against the DiT where the training
    read it, or one of `dits` with the same file name, else without the DiT (the LoRA's own keys, rank, alpha and
    metadata). Empty when there is no run.json or it recorded none; DamagedRunFile when it is not in shape."""
    from launcher.core import runfiles

    run_dir = Path(run_dir)
    recorded = (runfiles.read_if_there(run_dir / "run.json") or {}).get("lora_check") or {}
    by_name = {Path(d).name: Path(d) for d in dits}
    fresh = {}
    for step, record in recorded.items():
        want, name, dit = Want(**record["want"]), record["output_name"], Path(record["dit"])
        here = dit if dit.is_file() else by_name.get(dit.name)
        fresh[step] = check_training(lora_files(run_dir, name), record["dit"], want, name, here)
    return fresh
