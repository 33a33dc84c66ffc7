"""Fake wan_cache_latents (test double): checks argv, writes one stand-in cache file per entry."""

from _fake_common import cache_dirs, progress, start

args = start("wan_cache_latents")
for folder in cache_dirs(args):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "item_wan.safetensors").write_text("fake latents i2v=%s\n" % ("--i2v" in args))
progress("caching latents")
