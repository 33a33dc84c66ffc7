"""Fake wan_cache_text_encoder_outputs (test double): checks argv, writes stand-in cache files."""

if not __package__:  # run as a file, like the real scripts: make the package importable
    import _script_path  # noqa: F401
from musubi_tuner._fake_common import add_options, cache_dirs, progress, start


def wan_setup_parser(parser):
    return add_options(parser, "wan_cache_text_encoder_outputs")


def main():
    args = start("wan_cache_text_encoder_outputs")
    for folder in cache_dirs(args):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "item_wan_te.safetensors").write_text("fake text encoder outputs\n")
    progress("encoding prompts")


if __name__ == "__main__":
    main()
