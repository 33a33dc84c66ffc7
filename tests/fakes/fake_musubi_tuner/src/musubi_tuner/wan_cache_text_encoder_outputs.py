"""Fake wan_cache_text_encoder_outputs (test double): checks argv, writes stand-in cache files."""

from _fake_common import cache_dirs, progress, start

args = start("wan_cache_text_encoder_outputs")
for folder in cache_dirs(args):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "item_wan_te.safetensors").write_text("fake text encoder outputs\n")
progress("encoding prompts")
