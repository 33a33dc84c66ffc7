"""Fake wan_cache_text_encoder_outputs (test double): checks argv, writes one cache file per caption."""

if not __package__:  # run as a file, like the real scripts: make the package importable
    import _script_path  # noqa: F401
from pathlib import Path

from musubi_tuner import _fake_cache as cache
from musubi_tuner._fake_common import add_options, progress, start, value


def wan_setup_parser(parser):
    return add_options(parser, "wan_cache_text_encoder_outputs")


def main():
    args = start("wan_cache_text_encoder_outputs")
    cache.meet("wan_cache_text_encoder_outputs")
    for entry in cache.datasets(value(args, "--dataset_config")):
        folder = Path(entry["cache_directory"])
        existing = set(folder.glob(f"*_{cache.ARCH}_te.safetensors"))  # listed before encoding, as musubi does
        written = set()
        for name, caption in cache.captions(entry).items():
            metadata = {"architecture": "wan", "caption1": caption, "format_version": "1.0.1"}
            if (folder / name).exists():  # merge_existing: musubi reads the file it replaces
                metadata = cache.read(folder / name) | metadata
            cache.write(folder / name, metadata)
            written.add(folder / name)
        cache.remove_others(existing, written, args)
    progress("encoding prompts")


if __name__ == "__main__":
    main()
