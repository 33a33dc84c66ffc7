"""Bad input, by class: numbers, paths, text, media, messages, cloud options. Through the CLI and the container
entrypoint, every case must give exit code 2, exactly one `error:` line that names the problem and the fix, no
traceback, no secret in the output, and leave the folder tree byte for byte as it was."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import FAKES, SECRET_VARS
from test_bad_inputs import _user_preset as user_preset  # mine.toml: the stock preset with one edit

from launcher.cli.main import main as launcher_main
from lora_gym_entrypoint.main import main as entrypoint_main

SECRETS = {name: f"{name.lower()}-VALUE-{n:04d}-do-not-print" for n, name in enumerate(SECRET_VARS)}
DRY = ["run", "--dry-run", "--preset", "wan21-t2v-14b", "--dataset", "{dataset}"]
DRY22 = ["run", "--dry-run", "--preset", "wan22-t2v-lightning", "--expert", "high", "--dataset", "{dataset}"]
RUNPOD = [*DRY, "--backend", "runpod"]
CHECK = ["dataset", "check", "{dataset}", "--preset", "wan21-t2v-14b"]


@dataclass
class Case:
    cls: str
    id: str
    argv: list[str] | None = None  # a launcher command line; None: the entrypoint, with `env`
    words: tuple[str, ...] = ()
    setup: Callable[[Path, Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    report: bool = False  # `dataset check`: the problems table on stdout names the file, stderr sums up


def sets(*overrides: str, base=DRY) -> list[str]:
    return [*base, *(word for o in overrides for word in ("--set", o))]


def write(name: str, data: bytes | str):
    def setup(dataset: Path, tmp: Path):
        path = (tmp if name.startswith("/") else dataset) / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def link(name: str, target: str):
    def setup(dataset: Path, tmp: Path):
        os.symlink(target.format(dataset=dataset, tmp=tmp), dataset / name)
    return setup


def folder(name: str):
    return lambda dataset, tmp: (tmp / name).mkdir(parents=True)


def cut(name: str, keep: float):
    def setup(dataset: Path, tmp: Path):
        data = (dataset / name).read_bytes()
        (dataset / name).write_bytes(data[: int(len(data) * keep)])
    return setup


def to_jpeg(dataset: Path, tmp: Path):
    from PIL import Image

    Image.open(dataset / "images/zorbix_city_night.png").convert("RGB").save(dataset / "images/city.jpg")
    (dataset / "images/city.txt").write_text("zorbix in a city")
    data = (dataset / "images/city.jpg").read_bytes()
    (dataset / "images/city.jpg").write_bytes(data[: len(data) // 3])


def corrupt_frames(dataset: Path, tmp: Path):
    """Keep the MP4's boxes (a sound header) and overwrite the frame data after its first 200 bytes."""
    path = dataset / "videos/zorbix_desert_hop.mp4"
    data = bytearray(path.read_bytes())
    mdat, moov = data.find(b"mdat"), data.find(b"moov")
    end = moov - 4 if moov > mdat else len(data)
    data[mdat + 204:end] = b"\x5a" * (end - mdat - 204)
    path.write_bytes(bytes(data))


def latin1_caption(dataset: Path, tmp: Path):
    (dataset / "images/zorbix_beach_wave.txt").write_bytes("zorbix au café".encode("latin-1"))


def entry_env(**extra: str) -> dict[str, str]:
    return {"LORA_GYM_PRESET": "wan21-t2v-14b", "LORA_GYM_DRY_RUN": "1", **extra}


CASES = [
    # --- numbers: every float finite, every integer bounded; schema, CLI options and environment alike
    Case("numbers", "lr inf", sets("train.learning_rate=inf"), ("train.learning_rate", "finite")),
    Case("numbers", "lr -inf", sets("train.learning_rate=-inf"), ("train.learning_rate", "finite")),
    Case("numbers", "lr overflows to inf", sets("train.learning_rate=1e400"), ("train.learning_rate", "finite")),
    Case("numbers", "flow shift nan", sets("train.discrete_flow_shift=nan"), ("discrete_flow_shift", "finite")),
    Case("numbers", "weight decay nan", sets("train.weight_decay=nan"), ("train.weight_decay", "finite")),
    Case("numbers", "time limit inf", sets("resources.time_limit_hours=inf"), ("time_limit_hours", "finite")),
    Case("numbers", "lightning strength inf", sets("experts.high.lightning.strength=inf", base=DRY22),
         ("experts.high.lightning.strength", "finite")),
    Case("numbers", "seed 2**32", sets("train.seed=4294967296"), ("train.seed", "4294967295")),
    Case("numbers", "rank in the quintillions", sets("train.network_dim=10000000000000000000"),
         ("train.network_dim", "4096")),
    Case("numbers", "epochs absurd", sets("train.max_train_epochs=100000000"), ("max_train_epochs", "10000")),
    Case("numbers", "repeats absurd", sets("dataset.images.num_repeats=99999999999"), ("num_repeats", "10000")),
    Case("numbers", "resolution absurd", sets("dataset.videos.0.resolution=99984,720"), ("resolution", "4096")),
    Case("numbers", "frames absurd", sets("dataset.videos.0.target_frames=100001"), ("target_frames", "1025")),
    Case("numbers", "inf in a preset file", ["run", "--dry-run", "--preset", "{tmp}/mine.toml", "--dataset",
                                             "{dataset}"], ("mine.toml", "learning_rate", "finite"),
         user_preset("learning_rate = 8e-5", "learning_rate = inf")),
    Case("numbers", "nan in a preset file", ["run", "--dry-run", "--preset", "{tmp}/mine.toml", "--dataset",
                                             "{dataset}"], ("mine.toml", "finite"),
         user_preset("learning_rate = 8e-5", "learning_rate = nan")),
    Case("numbers", "--max-hours inf", [*RUNPOD, "--max-hours", "inf"], ("--max-hours", "'inf'", "at most 720")),
    Case("numbers", "--max-hours nan", [*RUNPOD, "--max-hours", "nan"], ("--max-hours", "'nan'")),
    Case("numbers", "--max-hours huge", [*RUNPOD, "--max-hours", "1e9"], ("--max-hours", "at most 720")),
    Case("numbers", "--max-cost inf", [*RUNPOD, "--max-cost", "inf"], ("--max-cost", "'inf'")),
    Case("numbers", "--max-cost negative", [*RUNPOD, "--max-cost", "-5"], ("--max-cost", "above 0")),
    Case("numbers", "LORA_GYM_MAX_HOURS inf", None, ("LORA_GYM_MAX_HOURS='inf'", "e.g. 12"),
         env=entry_env(LORA_GYM_MAX_HOURS="inf")),
    Case("numbers", "LORA_GYM_MAX_HOURS nan", None, ("LORA_GYM_MAX_HOURS='nan'",),
         env=entry_env(LORA_GYM_MAX_HOURS="nan")),
    Case("numbers", "LORA_GYM_LOCK_TIMEOUT nan", None, ("LORA_GYM_LOCK_TIMEOUT='nan'", "21600"),
         env=entry_env(LORA_GYM_LOCK_TIMEOUT="nan")),
    Case("numbers", "LORA_GYM_LOCK_TIMEOUT inf", None, ("LORA_GYM_LOCK_TIMEOUT='inf'",),
         env=entry_env(LORA_GYM_LOCK_TIMEOUT="inf")),
    Case("numbers", "LORA_GYM_LOCK_TIMEOUT negative", None, ("LORA_GYM_LOCK_TIMEOUT='-1'",),
         env=entry_env(LORA_GYM_LOCK_TIMEOUT="-1")),
    Case("numbers", "LORA_GYM_SET inf", None, ("train.learning_rate", "finite"),
         env=entry_env(LORA_GYM_SET="train.learning_rate=inf")),

    # --- paths: names stay one segment inside their folder; destinations are checked before writing
    Case("paths", "output_name ..", sets("output_name=.."), ("output_name", "starting with a letter or digit")),
    Case("paths", "output_name ../x", sets("output_name=../escape"), ("output_name", "(got '../escape')")),
    Case("paths", "output_name a/b", sets("output_name=a/b"), ("output_name",)),
    Case("paths", "run id ..", None, ("LORA_GYM_RUN_ID '..'", "plain name"), env=entry_env(LORA_GYM_RUN_ID="..")),
    Case("paths", "run id ../x", None, ("LORA_GYM_RUN_ID '../escape'",), env=entry_env(LORA_GYM_RUN_ID="../escape")),
    Case("paths", "run id a/b", None, ("LORA_GYM_RUN_ID 'a/b'",), env=entry_env(LORA_GYM_RUN_ID="a/b")),
    Case("paths", "dangling symlink", DRY, ("images/gone.png is a symlink", "does not exist", "copy"),
         link("images/gone.png", "{tmp}/nowhere.png")),
    Case("paths", "symlink out of the dataset", DRY, ("images/outside.png links outside the dataset",
                                                      "cannot see it"),
         lambda d, t: (write("/elsewhere.png", b"x")(d, t), link("images/outside.png", "{tmp}/elsewhere.png")(d, t))),
    Case("paths", "preset path is a folder", ["run", "--dry-run", "--preset", "{tmp}/mine.toml", "--dataset",
                                              "{dataset}"], ("mine.toml is a folder, not a file",),
         folder("mine.toml")),
    Case("paths", "prompt file is a folder", ["caption", "{dataset}", "--anchor", "zorbix", "--dry-run",
                                              "--prompt-file", "{tmp}/prompts"], ("prompts is a folder",),
         folder("prompts")),
    Case("paths", "cp onto a file", ["presets", "cp", "wan21-t2v-14b", "{tmp}/mine.toml"],
         ("already a file", "--force"), write("/mine.toml", "# mine\n")),
    Case("paths", "cp onto a symlink", ["presets", "cp", "wan21-t2v-14b", "{tmp}/mine.toml"],
         ("already a symlink", "--force"),
         lambda d, t: (write("/real.toml", "# mine\n")(d, t), os.symlink(t / "real.toml", t / "mine.toml"))),
    Case("paths", "cp onto a dangling symlink", ["presets", "cp", "wan21-t2v-14b", "{tmp}/mine.toml"],
         ("already a symlink",), lambda d, t: os.symlink(t / "nowhere.toml", t / "mine.toml")),
    Case("paths", "cp into a missing folder", ["presets", "cp", "wan21-t2v-14b", "{tmp}/no/such/mine.toml"],
         ("does not exist", "create it first")),
    Case("paths", "cp under a file", ["presets", "cp", "wan21-t2v-14b", "{tmp}/afile/mine.toml"],
         ("afile", "is a file"), write("/afile", "x")),
    Case("paths", "prepare onto a file", ["dataset", "prepare", "{dataset}", "{tmp}/afile"],
         ("afile already exists", "nothing was changed"), write("/afile", "x")),
    Case("paths", "prepare without a parent", ["dataset", "prepare", "{dataset}", "{tmp}/no/such/copy"],
         ("does not exist", "create it first")),
    Case("paths", "output dir is a file", None, ("LORA_GYM_OUTPUT_DIR", "is a file"),
         write("/out", "x"), env=entry_env(LORA_GYM_DRY_RUN="0", LORA_GYM_OUTPUT_DIR="{tmp}/out")),
    Case("paths", "cache dir is a file", None, ("LORA_GYM_CACHE_DIR", "is a file"),
         write("/cache", "x"), env=entry_env(LORA_GYM_DRY_RUN="0", LORA_GYM_CACHE_DIR="{tmp}/cache")),
    Case("paths", "output dir under a file", None, ("LORA_GYM_OUTPUT_DIR", "cannot be created", "afile"),
         write("/afile", "x"), env=entry_env(LORA_GYM_DRY_RUN="0", LORA_GYM_OUTPUT_DIR="{tmp}/afile/out")),
    Case("paths", "status ../x", ["status", "../escape"], ("'../escape' is not a run id",)),
    Case("paths", "cache volume ../x", [*DRY, "--backend", "local", "--output", "{tmp}/out", "--cache-volume", "../x"],
         ("--cache-volume", "not a volume name")),
    Case("paths", "empty dataset path", ["run", "--dry-run", "--preset", "wan21-t2v-14b", "--dataset", ""],
         ("dataset folder is empty text",)),
    Case("paths", "runpod volume id ../x", [*RUNPOD, "--volume", "../x"], ("--volume '../x'", "volume id")),
    Case("paths", "caption is a folder", DRY, ("zorbix_beach_wave.txt is a folder, not a caption",),
         lambda d, t: ((d / "images/zorbix_beach_wave.txt").unlink(), (d / "images/zorbix_beach_wave.txt").mkdir())),
    Case("paths", "a pipe named like an image", DRY, ("images/pipe.png is not a regular file",),
         lambda d, t: os.mkfifo(d / "images/pipe.png")),
    Case("paths", "images is a file", ["run", "--dry-run", "--preset", "wan21-t2v-14b", "--dataset", "{tmp}/flat"],
         ("images is a file", "must be a folder"),
         lambda d, t: (shutil.copytree(d / "videos", t / "flat"), (t / "flat/images").write_text("x"))),
    Case("paths", "local --output is a file", [*DRY, "--backend", "local", "--output", "{tmp}/afile"],
         ("--output", "is a file"), write("/afile", "x")),

    # --- text: invisible captions are empty, control characters in names, odd --set keys, encodings agree
    Case("text", "caption only a BOM", DRY, ("zorbix_beach_wave.txt is empty", "invisible"),
         write("images/zorbix_beach_wave.txt", b"\xef\xbb\xbf")),
    Case("text", "caption only zero-width space", DRY, ("is empty",),
         write("images/zorbix_beach_wave.txt", "\u200b\u200b")),
    Case("text", "caption of format characters and spaces", DRY, ("is empty",),
         write("images/zorbix_beach_wave.txt", "\ufeff \u200d\u00a0\u2060\n")),
    Case("text", "newline in a file name", DRY, ("'images/note\\nx.txt'", "control characters", "rename"),
         write("images/note\nx.txt", "x")),
    Case("text", "tab in a file name", DRY, ("control characters",), write("images/a\tb.txt", "x")),
    Case("text", "escape in a file name", DRY, ("control characters",), write("images/\x1b[31mred.txt", "x")),
    Case("text", "arabic-indic digit index", sets("dataset.videos.\u0660.target_frames=21"),
         ("unknown override key",)),
    Case("text", "fullwidth digit index", sets("dataset.videos.\uff10.target_frames=21"), ("unknown override key",)),
    Case("text", "absurd nesting", sets("train" + ".x" * 300 + "=1"), ("longer than any preset key",)),
    Case("text", "latin-1 caption in run", DRY, ("zorbix_beach_wave.txt is not UTF-8", "re-save"), latin1_caption),
    Case("text", "latin-1 caption in caption", ["caption", "{dataset}", "--anchor", "zorbix", "--dry-run"],
         ("not UTF-8", "--overwrite"), latin1_caption),
    Case("text", "non-UTF-8 preset file", ["run", "--dry-run", "--preset", "{tmp}/mine.toml", "--dataset",
                                           "{dataset}"], ("not UTF-8",), write("/mine.toml", b"name = \"caf\xe9\"\n")),

    # --- media: decoded, not only the headers
    Case("media", "truncated PNG", CHECK, ("zorbix_beach_wave.png does not decode", "truncated"),
         cut("images/zorbix_beach_wave.png", 0.5), report=True),
    Case("media", "truncated JPEG", CHECK, ("images/city.jpg does not decode",), to_jpeg, report=True),
    Case("media", "MP4 frames corrupt", CHECK, ("zorbix_desert_hop.mp4: frame 1 of the", "does not decode"),
         corrupt_frames, report=True),
    Case("media", "MP4 cut short", CHECK, ("zorbix_desert_hop.mp4",), cut("videos/zorbix_desert_hop.mp4", 0.6),
         report=True),

    # --- messages that named the wrong problem
    Case("messages", "dangling link is not an extension problem", DRY, ("does not exist",),
         link("images/zorbix_gone.png", "zorbix_missing.png")),
    Case("messages", "symlink loop", DRY, ("images/loop.png is a symlink to loop.png",), link("images/loop.png",
                                                                                           "loop.png")),
    Case("messages", "upper-case caption extension", DRY,
         ("rename images/zorbix_beach_wave.TXT to images/zorbix_beach_wave.txt", "lower-case"),
         lambda d, t: (d / "images/zorbix_beach_wave.txt").rename(d / "images/zorbix_beach_wave.TXT")),
    Case("messages", "duplicate video entry name", sets("dataset.videos.1.name=head"), ("every entry needs its own",)),

    # --- cloud options a real launch would refuse
    Case("cloud", "runpod gpu misspelled", [*RUNPOD, "--gpu", "NVIDIA H100 80GB HBMx"],
         ("not a RunPod GPU type", "did you mean 'NVIDIA H100 80GB HBM3'")),
    Case("cloud", "runpod gpu too small", [*RUNPOD, "--gpu", "NVIDIA L4"], ("has 24 GB", "needs a 80 GB")),
    Case("cloud", "runpod gpu too small by display name", [*RUNPOD, "--gpu", "rtx 3090"], ("has 24 GB",)),
    Case("cloud", "runpod gpu near miss", [*RUNPOD, "--gpu", "NVIDIA GeForce RTX 4099"], ("did you mean",)),
    Case("cloud", "modal gpu unknown", [*DRY, "--backend", "modal", "--image", "ghcr.io/you/lora-gym-wan21:0.1.0",
                                        "--gpu", "H1000"], ("--gpu H1000", "use one of")),
]


def _tree(root: Path) -> dict[str, object]:
    """Every file's bytes, every link's target, every folder: the tree as a user would compare it."""
    tree: dict[str, object] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            tree[rel] = ("link", os.readlink(path)) if path.is_symlink() else "dir" if path.is_dir() else \
                path.read_bytes() if path.is_file() else ("special", path.stat().st_mode)  # never open a pipe
    return tree


def _entrypoint_env(monkeypatch, env: dict[str, str], dataset: Path, tmp: Path) -> None:
    for name in [n for n in os.environ if n.startswith("LORA_GYM_") and n != "LORA_GYM_HOME"]:
        monkeypatch.delenv(name)
    defaults = {"LORA_GYM_DATASET_DIR": str(dataset), "LORA_GYM_OUTPUT_DIR": str(tmp / "output"),
                "LORA_GYM_CACHE_DIR": str(tmp / "cache"), "LORA_GYM_WEIGHTS_DIR": str(tmp / "weights"),
                "LORA_GYM_MUSUBI_DIR": str(FAKES / "fake_musubi_tuner")}
    for name, value in (defaults | env).items():
        monkeypatch.setenv(name, value.format(dataset=dataset, tmp=tmp))


def test_every_class_has_several_cases():
    classes = {}
    for case in CASES:
        classes[case.cls] = classes.get(case.cls, 0) + 1
    assert len(CASES) >= 60 and min(classes.values()) >= 3, classes
    assert len({c.id for c in CASES}) == len(CASES)


def run_refused(case, tmp_path, dataset, capsys, monkeypatch, fill) -> tuple[str, str]:
    """One case through its program (the launcher's argv, each argument through `fill`, or the entrypoint's
    environment), with what every refusal must keep: exit 2, one `error:` line of at most 400 characters, no
    traceback, no secret, nothing created. Returns stdout and the error line."""
    monkeypatch.chdir(tmp_path)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    if case.setup:
        case.setup(dataset, tmp_path)
    before = _tree(tmp_path)
    if case.argv is None:
        _entrypoint_env(monkeypatch, case.env, dataset, tmp_path)
        code = entrypoint_main([])
    else:
        code = launcher_main([fill(a) for a in case.argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err and len(lines[0]) <= 400, "one readable line"
    assert not [name for name, value in SECRETS.items() if value in out + err]
    assert _tree(tmp_path) == before
    return out, lines[0]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.cls}: {c.id}" for c in CASES])
def test_bad_input_class(case, tmp_path, dataset, capsys, monkeypatch):
    out, line = run_refused(case, tmp_path, dataset, capsys, monkeypatch,
                            lambda arg: arg.format(dataset=dataset, tmp=tmp_path))
    said = out + line if case.report else line
    for word in case.words:
        assert word in said, f"{word!r} not in {said!r}"
    assert case.report or out == ""
