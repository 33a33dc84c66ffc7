"""Fake wan_cache_latents (test double): checks argv, writes one stand-in cache file per entry."""

if not __package__:  # run as a file, like the real scripts: make the package importable
    import _script_path  # noqa: F401
from musubi_tuner._fake_common import add_options, cache_dirs, progress, start


def wan_setup_parser(parser):
    return add_options(parser, "wan_cache_latents")


def main():
    args = start("wan_cache_latents")
    for folder in cache_dirs(args):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "item_wan.safetensors").write_text(f"fake latents i2v={'--i2v' in args}\n")
    progress("caching latents")


if __name__ == "__main__":
    main()
