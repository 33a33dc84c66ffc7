"""Files LoRA Gym reads back (launcher/core/runfiles.py): a run folder's run.json and progress.json and the run
registry's records. Damaged ones (not JSON, cut short, of the wrong type, a field missing or mistyped) give exit
code 2 and one `error:` line naming the file, the field and the fix, through `launcher report`, `status` and
`pull`, and through the entrypoint when it continues a run; generated damage (hypothesis) never gives a traceback.
Also: `--backend local` runs are recorded in the registry, so `launcher status` lists them (issue 18)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import EXAMPLE_DATASET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_entrypoint import Container
from test_sweep import FakeEngine

from launcher import backends, runs
from launcher.backends import local
from launcher.cli.main import main
from launcher.core import runfiles

RUN_ID = "wan21-t2v-1.3b-20261202-101500"
ENV = {"LORA_GYM_RUN_ID": RUN_ID, "LORA_GYM_SET": "train.max_train_epochs=2"}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Container, Path]:
    """A real run folder: the entrypoint and the musubi-tuner double, two epochs, samples and report."""
    tmp = tmp_path_factory.mktemp("run-files")
    shutil.copytree(EXAMPLE_DATASET, tmp / "dataset")
    box = Container(tmp, tmp / "dataset")
    box.stock_weights("wan21-t2v-1.3b")
    result = box.run(box.env("wan21-t2v-1.3b", **ENV))
    assert result.returncode == 0, result.stderr[-2000:]
    return box, box.output / RUN_ID


@pytest.fixture
def run_dir(made, tmp_path) -> Path:
    """A private copy of the real run folder, under <tmp>/runs/<run id>."""
    target = tmp_path / "runs" / RUN_ID
    shutil.copytree(made[1], target)
    return target


def edit(name: str, change):
    """Damage: `change(data)` on the parsed file (returns the new value), written back as JSON."""
    def damage(folder: Path) -> None:
        path = folder / name
        data = json.loads(path.read_text())
        path.write_text(json.dumps(change(data)))
    damage.file = name
    return damage


def raw(name: str, make):
    def damage(folder: Path) -> None:
        (folder / name).write_bytes(make((folder / name).read_bytes()))
    damage.file = name
    return damage


def setting(*keys, value=None, drop=False):
    def change(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        if drop:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
        return data
    return change


# (id, damage, words the one error line must hold besides the file's name and the fix)
DAMAGES = [
    ("run.json not JSON", raw("run.json", lambda b: b"run finished fine"), ("run.json is not valid JSON",)),
    ("run.json cut short", raw("run.json", lambda b: b[: len(b) // 2]), ("not valid JSON (cut short?)",)),
    ("run.json not UTF-8", raw("run.json", lambda b: b"\xff\xfe\xfa" + b), ("not UTF-8",)),
    ("run.json a list", edit("run.json", lambda d: [d]), ("the file is a list, not an object",)),
    ("run.json a string", edit("run.json", lambda d: "succeeded"), ("the file is text 'succeeded'",)),
    ("output without its sha256", edit("run.json", setting("outputs", 0, "sha256", drop=True)),
     ("outputs[0].sha256 is missing",)),
    ("status a number", edit("run.json", setting("status", value=0)), ("status is a number, not text",)),
    ("steps a string", edit("run.json", setting("steps", value="all")), ("steps is text 'all', not a list",)),
    ("step name a number", edit("run.json", setting("steps", 0, "name", value=7)), ("steps[0].name",)),
    ("output size text", edit("run.json", setting("outputs", 0, "size", value="52 kB")), ("outputs[0].size",)),
    ("exit code true", edit("run.json", setting("exit_code", value=True)), ("exit_code is true/false",)),
    ("lora check want a list", edit("run.json", setting("lora_check", "train", "want", value=[])),
     ("lora_check.train.want is a list",)),
    ("sample video prompt text", edit("run.json", setting("samples", "videos", 0, "prompt", value="1")),
     ("samples.videos[0].prompt",)),
    ("settings a list", edit("run.json", setting("settings", value=[])), ("settings is a list",)),
    ("progress.json cut short", raw("progress.json", lambda b: b[:40]), ("progress.json is not valid JSON",)),
    ("trainings a list", edit("progress.json", setting("trainings", value=[])), ("trainings is a list",)),
    ("history point not a pair", edit("progress.json", setting("trainings", "train", "history", value=[[1]])),
     ("trainings.train.history[0] is a list, not a pair of numbers",)),
    ("updated_at not a time", edit("progress.json", setting("updated_at", value="yesterday")),
     ("updated_at is text 'yesterday'", "ISO 8601")),
    ("loss NaN", raw("progress.json", lambda b: b.replace(b'"loss_avg": 0.', b'"loss_avg": NaN, "x": 0.', 1)),
     ("loss_avg is nan (not finite)",)),
    ("progress status missing", edit("progress.json", setting("status", drop=True)), ("status is missing",)),
    ("current step text", edit("progress.json", setting("current", value={"step": "7"})), ("current.step",)),
]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error(capsys, code: int, *words: str) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, out, err)
    assert "Traceback" not in out + err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


class CopyingBackend:
    """Test double of a detached backend whose pull brings a prepared run folder (possibly damaged)."""

    source: Path

    def pull(self, record, dest):
        shutil.copytree(self.source, Path(dest) / record["run_id"])
        return 0


def record_local(run_dir: Path) -> None:
    runs.save({"run_id": RUN_ID, "backend": "local", "preset": "wan21-t2v-1.3b", "output": str(run_dir.parent),
               "created_at": "2026-12-02T10:15:00+00:00"})


def test_the_files_a_real_run_writes_fit_their_shapes(run_dir):
    for name in ("run.json", "progress.json"):
        assert runfiles.read(run_dir / name) == json.loads((run_dir / name).read_text())


def test_the_damage_table_is_large_and_covers_both_files():
    files = [damage.file for _, damage, _ in DAMAGES]
    assert len(DAMAGES) >= 15 and files.count("run.json") >= 10 and files.count("progress.json") >= 5


@pytest.mark.parametrize("damage, words", [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES])
@pytest.mark.parametrize("command", ["report", "status", "pull"])
def test_a_damaged_run_file_is_one_error_line(command, damage, words, run_dir, tmp_path, capsys, monkeypatch):
    damage(run_dir)
    if command == "report":
        before = _tree(tmp_path)
        code = main(["report", str(run_dir)])
        assert _tree(tmp_path) == before  # no report.html half-written, nothing else touched
    elif command == "status":
        record_local(run_dir)
        code = main(["status", RUN_ID])
    else:
        monkeypatch.setitem(backends.BACKENDS, "copying", "test_run_files:CopyingBackend")
        CopyingBackend.source = run_dir
        runs.save({"run_id": RUN_ID, "backend": "copying"})
        code = main(["pull", RUN_ID, str(tmp_path / "pulled")])
    one_error(capsys, code, f"{RUN_ID}/{damage.file}", *words, f"pull it again with `launcher pull {RUN_ID}`")


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_text("{"), ("is not valid JSON (cut short?)",)),
    (lambda p: p.write_text("[]"), ("the file is a list",)),
    (lambda p: p.write_text(json.dumps({"run_id": RUN_ID})), ("backend is missing",)),
    (lambda p: p.write_text(json.dumps({"run_id": RUN_ID, "backend": 3})), ("backend is a number",)),
], ids=["registry record cut short", "registry record a list", "registry record without backend",
        "registry record backend a number"])
@pytest.mark.parametrize("argv", [["status"], ["status", RUN_ID], ["logs", RUN_ID]], ids=" ".join)
def test_a_damaged_registry_record_is_one_error_line(argv, damage, words, capsys):
    runs.save({"run_id": RUN_ID, "backend": "local"})
    damage(runs.home() / "runs" / f"{RUN_ID}.json")
    one_error(capsys, main(argv), f"{RUN_ID}.json", *words, "fix or remove that run record")


# --- the entrypoint, continuing a run whose folder holds a damaged file ---------------------------------------

@pytest.mark.parametrize("damage, words", [DAMAGES[i][1:] for i in (1, 3, 5, 11, 15)],
                         ids=[DAMAGES[i][0] for i in (1, 3, 5, 11, 15)])
def test_the_entrypoint_refuses_to_continue_a_damaged_run_folder(made, damage, words):
    box, folder = made
    saved = {name: (folder / name).read_bytes() for name in ("run.json", "progress.json")}
    try:
        damage(folder)
        before = _tree(folder)
        result = box.run(box.env("wan21-t2v-1.3b", **ENV))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert all(word in lines[0] for word in words) and "choose another LORA_GYM_RUN_ID" in lines[0]
        assert _tree(folder) == before
    finally:
        for name, data in saved.items():
            (folder / name).write_bytes(data)


# --- generated damage: random JSON, and random edits of a real run.json ----------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3), max_leaves=12)
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])


def _paths(value, prefix=()):
    """Every (key path) inside a JSON value: where an edit may land."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield from _paths(inner, (*prefix, key))


def _mutated(data, path, how, new):
    if not path:
        return new
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if how == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return data


def _refused_or_done(capsys, code: int, names: tuple[str, ...]) -> None:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code in (0, 1, 2), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and any(n in lines[0] for n in names), err
        assert "shows the traceback" not in lines[0]  # the reader's line, not the catch-all for a surprise


WRONG = [None, "x", 7, [], {}]  # a value of each other JSON kind


def every_edit(real):
    """(field path, edited copy) for every field of a real file replaced by each JSON kind, and dropped; the
    preset's settings (free-form for the readers) and the commands' argv only down to their own level."""
    for path in _paths(real):
        if not path or (path[0] == "settings" and len(path) > 2) or "argv" in path[:-1]:
            continue
        for how, new in [("drop", None), *(("replace", w) for w in WRONG)]:
            yield path, json.loads(json.dumps(_mutated(json.loads(json.dumps(real)), path, how, new)))


def _survives(run, capsys, names) -> str | None:
    try:
        _refused_or_done(capsys, run(), names)
    except Exception as exc:  # noqa: BLE001 - collected, so one failure names every field that breaks
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def test_every_field_of_a_real_run_json_edited_gives_a_report_or_one_line(made, run_dir, capsys):
    (run_dir / "progress.json").unlink()  # no loss plot to draw: fast
    real, broken = json.loads((made[1] / "run.json").read_text()), []
    for path, changed in every_edit(real):
        (run_dir / "run.json").write_text(json.dumps(changed))
        if problem := _survives(lambda: main(["report", str(run_dir)]), capsys, ("run.json",)):
            broken.append((path, problem))
    assert not broken, broken[:5]


def test_every_field_of_a_real_progress_json_edited_gives_a_status_or_one_line(made, run_dir, capsys):
    record_local(run_dir)
    real, broken = json.loads((made[1] / "progress.json").read_text()), []
    for path, changed in every_edit(real):
        (run_dir / "progress.json").write_text(json.dumps(changed))
        if problem := _survives(lambda: main(["status", RUN_ID]), capsys, ("progress.json",)):
            broken.append((path, problem))
    assert not broken, broken[:5]


@SLOW
@given(value=JSON)
def test_random_json_as_run_json_never_gives_a_traceback(value, run_dir, capsys):
    (run_dir / "progress.json").unlink(missing_ok=True)  # no loss plot to draw: fast examples
    (run_dir / "run.json").write_text(json.dumps(value))
    _refused_or_done(capsys, main(["report", str(run_dir)]), ("run.json",))


@SLOW
@given(data=st.data())
def test_random_edits_of_a_real_run_json_never_give_a_traceback(data, made, run_dir, capsys):
    (run_dir / "progress.json").unlink(missing_ok=True)
    real = json.loads((made[1] / "run.json").read_text())
    path = data.draw(st.sampled_from(list(_paths(real))))
    how = data.draw(st.sampled_from(["replace", "drop", "cut"]))
    if how == "cut":
        text = json.dumps(real)
        (run_dir / "run.json").write_text(text[: data.draw(st.integers(0, len(text) - 1))])
    else:
        (run_dir / "run.json").write_text(json.dumps(_mutated(real, path, how, data.draw(JSON))))
    _refused_or_done(capsys, main(["report", str(run_dir)]), ("run.json",))


@SLOW
@given(data=st.data())
def test_random_edits_of_a_real_progress_json_never_break_status(data, made, run_dir, capsys):
    record_local(run_dir)
    real = json.loads((made[1] / "progress.json").read_text())
    path = data.draw(st.sampled_from(list(_paths(real))))
    changed = _mutated(real, path, data.draw(st.sampled_from(["replace", "drop"])), data.draw(JSON))
    (run_dir / "progress.json").write_text(json.dumps(changed))
    code = main(["status", RUN_ID])
    _refused_or_done(capsys, code, ("progress.json",))


# --- issue 18: local runs are in the run registry ------------------------------------------------------------

def test_a_local_run_is_recorded_and_status_reads_its_run_folder(made, tmp_path, capsys, monkeypatch):
    box = made[0]
    output = (tmp_path / "out").resolve()
    engine = FakeEngine(box, output)
    monkeypatch.setattr(local, "engine_execute", lambda spec, job: engine)
    assert main(["run", "--preset", "wan21-t2v-1.3b", "--dataset", str(box.dataset), "--backend", "local",
                 "--output", str(output), "--no-check", "--set", "train.max_train_epochs=2"]) == 0
    [(run_id, stage, _)] = engine.started
    assert stage == "all" and (output / run_id / "run.json").is_file()  # the launcher named the run folder
    capsys.readouterr()
    assert main(["status"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed == [f"{run_id}  local  wan21-t2v-1.3b  {runs.load(run_id)['created_at']}  succeeded"]
    assert main(["status", run_id]) == 0
    shown = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert shown["state"] == "succeeded" and shown["folder"] == str(output / run_id)
    assert shown["progress"].startswith("samples-e000002: ") and "[run succeeded]" in shown["progress"]
    one_error(capsys, main(["logs", run_id]), "is a local run", "went to the terminal", str(output / run_id))
    assert main(["pull", run_id, str(tmp_path / "dl")]) == 0 and not (tmp_path / "dl").exists()


def test_a_local_runs_state_follows_its_run_folder(run_dir, capsys):
    record_local(run_dir)
    manifest = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(manifest | {"status": "failed", "exit_code": 3}))
    assert main(["status", RUN_ID]) == 0 and "state            failed (exit code 3)" in capsys.readouterr().out
    (run_dir / "run.json").unlink()
    (run_dir / "progress.json").unlink()
    assert main(["status", RUN_ID]) == 0 and "not started (no run.json yet)" in capsys.readouterr().out


# --- the same reader for run files on a platform's volume ---------------------------------------------------

def test_a_damaged_progress_json_on_a_modal_volume_is_one_error_line(monkeypatch, capsys):
    import modal
    from test_modal_backend import RECORD, FakeCall, ProgressVolume

    volume = ProgressVolume()
    volume.files = {"r1/high/progress.json": json.dumps({"status": "running", "current": []})}
    monkeypatch.setattr(modal.Volume, "from_name", lambda name: volume)
    monkeypatch.setattr(modal.FunctionCall, "from_id", lambda call_id: FakeCall(error=TimeoutError()))
    runs.save(RECORD)
    one_error(capsys, main(["status", "r1"]), "lora-gym-outputs:/r1/high/progress.json: current is a list",
              "pull it again with `launcher pull r1`")


class S3Object:
    """Test double of a boto3 S3 client holding one object."""

    def __init__(self, body: bytes):
        self.body = body

    def get_object(self, Bucket, Key):  # noqa: N803 - boto3's argument names
        import io

        return {"Body": io.BytesIO(self.body)}


@pytest.mark.parametrize("body, words", [(b'{"status": "running", "trainings": {"train": 3}}',
                                          "trainings.train is a number, not an object"),
                                         (b"[1, 2", "is not valid JSON (cut short?)")])
def test_a_damaged_run_file_on_a_runpod_volume_is_refused_by_name(body, words):
    from launcher.backends import runpod_s3

    with pytest.raises(runfiles.DamagedRunFile) as refused:
        runpod_s3.read_json(S3Object(body), "vol-1", "lora-gym/output/r1/progress.json")
    assert str(refused.value).startswith("s3://vol-1/lora-gym/output/r1/progress.json") and words in str(refused.value)
    assert "launcher pull r1" in str(refused.value)
