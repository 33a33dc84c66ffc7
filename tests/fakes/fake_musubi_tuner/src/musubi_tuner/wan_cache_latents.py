"""Fake wan_cache_latents (test double): checks argv, writes one cache file per item as musubi names it."""

if not __package__:  # run as a file, like the real scripts: make the package importable
    import _script_path  # noqa: F401
from pathlib import Path

from musubi_tuner import _fake_cache as cache
from musubi_tuner._fake_common import add_options, progress, start, value


def wan_setup_parser(parser):
    return add_options(parser, "wan_cache_latents")


def main():
    args = start("wan_cache_latents")
    cache.meet("wan_cache_latents")
    for entry in cache.datasets(value(args, "--dataset_config")):
        folder = Path(entry["cache_directory"])
        written = set()
        for name in cache.latent_names(entry):
            width, height = entry["resolution"]
            cache.write(folder / name, {"architecture": "wan", "width": str(width), "height": str(height),
                                        "format_version": "1.0.1", "i2v": str("--i2v" in args)})
            written.add(folder / name)
        cache.remove_others(set(folder.glob(f"*_{cache.ARCH}.safetensors")), written, args)  # listed after
    progress("caching latents")


if __name__ == "__main__":
    main()
