"""After a training: every LoRA file it wrote gets its provenance in its metadata, then is checked against the DiT
it was trained on (launcher/loracheck.py). A LoRA that would load partially fails the run with a one-line reason.

musubi-tuner records only the architecture (`ss_base_model_version` "wan") and the DiT's file name
(`ss_sd_model_name`; training/trainer_base.py at 30c658c4): not which repo, revision or bytes, nor that the DiT was
a Lightning merge. So the entrypoint adds `lora_gym.*` keys: base_model (repo:path@revision and sha256 from the
weights lock), for Lightning presets merged_dit (the merged DiT's cache key) and lightning_lora, preset, expert.

The file is rewritten with the same tensors, byte for byte: the new header keeps every tensor entry and its
data_offsets, and the data after the header is copied unchanged. musubi's `sshs_model_hash` (networks/lora.py
save_weights -> utils/model_utils.py addnet_hash_safetensors) is the sha256 of that data, so it stays right; no ss_*
key changes. The rewrite goes to a hidden `.<name>.lora-gym-stamp` file beside it, fsynced, then os.replace: a
reader (a sample step, a pull, resume.final_lora's whole-file test) sees the old whole file or the new whole one,
and resume's file patterns (`<name>.safetensors`, `<name>-<epoch>.safetensors`) never match the temporary name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from launcher import loracheck
from launcher.core.job import read_lock
from launcher.core.plan import Plan, Step, WeightFile

EXIT_CODE = 1  # a training that exited 0 but left a LoRA that does not fit its DiT
STAMP = ".lora-gym-stamp"


def _arg(argv: Sequence[str], flag: str) -> str:
    return argv[list(argv).index(flag) + 1]


def _identity(weight: WeightFile, lock: Mapping[str, Mapping]) -> str:
    entry = lock.get(f"{weight.repo}:{weight.path}", {})
    revision = f"@{entry['revision']}" if entry.get("revision") else ""
    digest = entry.get("sha256") or weight.sha256
    return f"{weight.repo}:{weight.path}{revision}" + (f" sha256:{digest}" if digest else "")


def provenance(plan: Plan, step: Step, lock: Mapping[str, Mapping]) -> dict[str, str]:
    """The lora_gym.* metadata of the LoRAs a train step writes: what it was trained on."""
    by_path = {weight.container_path: weight for weight in plan.weights}
    dit = _arg(step.argv, "--dit")
    merge = next((s for s in plan.steps if "--output" in s.argv and _arg(s.argv, "--output") == dit
                  and s.name.startswith("merge-lightning")), None)
    base = by_path[_arg(merge.argv, "--dit") if merge else dit]
    data = {"lora_gym.preset": plan.preset, "lora_gym.base_model": _identity(base, lock)}
    expert = step.name.removeprefix("train").lstrip("-")
    if expert:
        data["lora_gym.expert"] = expert
    if merge:
        # The merge writes <cache>/lightning/<key>/<DiT file name>; the key names the DiT, LoRA and strength.
        data["lora_gym.merged_dit"] = Path(dit).parent.name
        data["lora_gym.lightning_lora"] = (f"{_identity(by_path[_arg(merge.argv, '--lora')], lock)} "
                                           f"strength {_arg(merge.argv, '--strength')}")
    return data


def stamp(path: Path, extra: Mapping[str, str]) -> bool:
    """Adds `extra` to the file's metadata, tensors untouched (see the module docstring); False if already there."""
    header = loracheck.read_header(path, "LoRA")
    if all(header.metadata.get(key) == value for key, value in extra.items()):
        return False  # idempotent: a restart checks again without rewriting
    blob = json.dumps({"__metadata__": {**header.metadata, **extra}, **header.tensors},
                      separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the 8-byte alignment the safetensors library pads to
    temporary = path.with_name(f".{path.name}{STAMP}")
    try:
        with path.open("rb") as source, temporary.open("wb") as target:
            target.write(len(blob).to_bytes(8, "little") + blob)
            source.seek(header.data_start)
            shutil.copyfileobj(source, target, 16 << 20)
            target.flush()
            os.fsync(target.fileno())
        shutil.copymode(path, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return True


def want(plan: Plan, step: Step, lock: Mapping[str, Mapping]) -> loracheck.Want:
    argv = step.argv
    return loracheck.Want(int(_arg(argv, "--network_dim")), float(_arg(argv, "--network_alpha")),
                          _arg(argv, "--network_module"), provenance(plan, step, lock))


def check(plan: Plan, step: Step, lock: Mapping[str, Mapping]) -> loracheck.Outcome:
    """Stamps and checks every LoRA file of one train step against the DiT it trained on."""
    out_dir, name, dit = _arg(step.argv, "--output_dir"), _arg(step.argv, "--output_name"), _arg(step.argv, "--dit")
    expected = want(plan, step, lock)
    for leftover in Path(out_dir).glob(f".*{STAMP}"):  # a stamp an earlier attempt left cut
        if loracheck.is_lora_file(leftover.name[1:].removesuffix(STAMP), name):
            leftover.unlink(missing_ok=True)
    files = loracheck.lora_files(out_dir, name)
    for path in files:
        with contextlib.suppress(loracheck.NotSafetensors):  # the check names a file that is no safetensors
            stamp(path, expected.metadata)
    outcome = loracheck.check_training(files, dit, expected, name)
    if outcome.status == "passed" and not outcome.dit_checked:  # in the container the DiT must be where it trained
        outcome.status, outcome.reason = "failed", f"the DiT {dit} the training read is gone: its keys went unchecked"
    return outcome


def after_training(ctx, step: Step, log: Callable[[str], None]) -> int:
    """Runs the check for a finished train step and records it in run.json; 0, or EXIT_CODE when it failed."""
    manifest = ctx.manifest
    outcome = check(ctx.job.plan, step, read_lock(ctx.settings.weights_lock))
    manifest.data.setdefault("lora_check", {})[step.name] = outcome.to_json()
    modules = sorted({f["modules"] for f in outcome.files})
    if outcome.status == "passed":
        log(f"{step.name}: LoRA check passed: {len(outcome.files)} file(s), {'/'.join(map(str, modules))} modules "
            f"each, every key on a weight of {outcome.dit}")
        manifest.write()
        return 0
    reason = f"LoRA check failed: {outcome.reason}"
    manifest.data["failure"] = {"step": step.name, "kind": "lora_check", "hint": reason}
    last = manifest.data["steps"][-1] if manifest.data["steps"] else {}
    if last.get("name") == step.name:  # musubi exited 0, but the step did not make a usable LoRA
        last.update(status="failed", reason=reason)
    manifest.write()
    log(f"{step.name}: {reason}")
    return EXIT_CODE
