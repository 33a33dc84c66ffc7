"""Fake wan_train_network (test double): checks argv, writes a stand-in LoRA file."""

from pathlib import Path

if not __package__:  # run as a file, like the real scripts: make the package importable
    import _script_path  # noqa: F401
from musubi_tuner._fake_common import add_options, progress, start, value


def wan_setup_parser(parser):
    return add_options(parser, "wan_train_network")


def main():
    args = start("wan_train_network")
    assert Path(value(args, "--dit")).is_file(), "fake musubi: --dit does not exist"
    out = Path(value(args, "--output_dir"))
    out.mkdir(parents=True, exist_ok=True)
    progress("steps")
    lora = out / f"{value(args, '--output_name')}.safetensors"
    lora.write_bytes(b"fake lora " + value(args, "--dit").encode())


if __name__ == "__main__":
    main()
