"""Fake wan_train_network (test double): checks argv, writes a stand-in LoRA file."""

from pathlib import Path

from _fake_common import progress, start, value

args = start("wan_train_network")
assert Path(value(args, "--dit")).is_file(), "fake musubi: --dit does not exist"
out = Path(value(args, "--output_dir"))
out.mkdir(parents=True, exist_ok=True)
progress("steps")
(out / f"{value(args, '--output_name')}.safetensors").write_bytes(b"fake lora " + value(args, "--dit").encode())
