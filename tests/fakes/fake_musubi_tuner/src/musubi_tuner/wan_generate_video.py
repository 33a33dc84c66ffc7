"""Fake wan_generate_video (test double): checks argv against the contract and what the real script needs after
parsing (DiT, LoRA and I2V image files present), then writes one tiny mp4 per `--from_file` prompt, named like
musubi's `<time>_<seed>.mp4`. Each video's colour follows the model it renders: each DiT with the LoRA data that
musubi's merge would put into it (_fake_merge.merge, which also prints musubi's warning for LoRA keys that match
no DiT key). A LoRA that lands nowhere changes nothing, so its videos are the base model's, the same every epoch.
"""

if not __package__:  # run as a file, like the real scripts: make the package importable
    import _script_path  # noqa: F401
import hashlib
import time
from pathlib import Path

from musubi_tuner import _fake_merge
from musubi_tuner._fake_common import add_options, progress, start, value, values


def wan_setup_parser(parser):
    return add_options(parser, "wan_generate_video")


def prompt_line(line: str, size: list[int], length: int) -> dict:
    """musubi's parse_prompt_line for the options LoRA Gym writes (w, h, f, d, i)."""
    text, *parts = line.split(" --")
    data = {"prompt": text.strip(), "height": size[0], "width": size[1], "frames": length, "seed": 0}
    keys = {"w": ("width", int), "h": ("height", int), "f": ("frames", int), "d": ("seed", int), "i": ("image", str)}
    for part in parts:
        key, _, val = part.strip().partition(" ")
        name, kind = keys[key]
        data[name] = kind(val.strip())
    return data


def write_mp4(path: Path, width: int, height: int, frames: int, shade: bytes) -> None:
    import av
    import numpy as np

    w, h = max(16, width // 8 // 2 * 2), max(16, height // 8 // 2 * 2)
    with av.open(str(path), "w") as box:
        stream = box.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for n in range(frames):
            pixels = np.zeros((h, w, 3), np.uint8)
            pixels[:] = list(shade[:3])
            pixels[:, (n * w // frames):(n * w // frames) + 2] = 255  # a bar that moves: frames differ
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)


def main():
    args = start("wan_generate_video")
    files = [value(args, "--dit"), value(args, "--dit_high_noise"), *values(args, "--lora_weight"),
             *values(args, "--lora_weight_high_noise")]
    for file in filter(None, files):
        assert Path(file).is_file(), f"fake musubi: {file} does not exist"
    models = [(value(args, "--dit"), values(args, "--lora_weight")),
              (value(args, "--dit_high_noise"), values(args, "--lora_weight_high_noise"))]
    merged = [_fake_merge.merge(dit, loras) for dit, loras in models if dit]
    if all(merged):
        shade = hashlib.sha256(b"".join(merged)).digest()
    else:  # a stand-in DiT or LoRA: which keys would land is unknown; the LoRA files as a whole colour it
        shade = hashlib.sha256(b"".join(Path(f).read_bytes() for f in files[2:])).digest()
    size, length = [int(v) for v in values(args, "--video_size")], int(value(args, "--video_length"))
    out = Path(value(args, "--save_path"))
    out.mkdir(parents=True, exist_ok=True)
    lines = Path(value(args, "--from_file")).read_text(encoding="utf-8").splitlines()
    for line in (entry.strip() for entry in lines):
        if not line or line.startswith("#"):
            continue
        prompt = prompt_line(line, size, length)
        if "i2v" in value(args, "--task"):
            assert Path(prompt.get("image", "")).is_file(), "fake musubi: I2V needs an existing start image"
        progress("sampling")
        stamp = time.strftime("%Y%m%d-%H%M%S")  # musubi's get_time_flag adds milliseconds: seed alone is unique
        write_mp4(out / f"{stamp}_{prompt['seed']}.mp4", prompt["width"], prompt["height"], prompt["frames"],
                  hashlib.sha256(shade + str(prompt["seed"]).encode()).digest())


if __name__ == "__main__":
    main()
