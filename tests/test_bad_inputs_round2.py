"""Bad input, round 2 (issue 19): grids, sample prompts and deep nesting, through the launcher and the container
entrypoint. Each case: exit code 2, one `error:` line naming the problem and its fix, no traceback, nothing on
stdout (the plan comes only after every check), and the folder tree as it was. Generated inputs check each
mechanism beyond the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, clean_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_input_classes import Case, entry_env, run_refused, sets, write

from launcher.cli.main import main as launcher_main
from launcher.core.errors import UserError
from launcher.core.inputs import MAX_NESTING, bracket_depth, data_depth
from launcher.core.presets import load_preset, parse_toml
from launcher.core.samples import parse_samples_file
from launcher.sweep import grid
from launcher.sweep.prepare import prepare_sweep

SWEEP = ["sweep", "--preset", "wan21-t2v-1.3b", "--dataset", "{dataset}", "--dry-run"]
SWEEP22 = ["sweep", "--preset", "wan22-t2v-lightning", "--expert", "high", "--dataset", "{dataset}", "--dry-run"]
DRY = ["run", "--dry-run", "--preset", "wan21-t2v-1.3b", "--dataset", "{dataset}"]
DEEP = 100_000  # brackets: far past Python's recursion limit (1000)


def swept(*args: str, base=SWEEP) -> list[str]:
    return [*base, *args]


def deep_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def deep_toml(depth: int) -> str:
    return 'name = "x"\nvalue = ' + deep_list(depth) + "\n"


def literal(text: str) -> str:
    """An environment value with braces, through the str.format that fills in {dataset} and {tmp}."""
    return text.replace("{", "{{").replace("}", "}}")


SAMPLES = [*DRY, "--samples", "{tmp}/prompts.txt"]


CASES = [
    # --- grids: values by value, keys that change runs, one place per key, the preset's own task
    Case("grids", "1e-4 and 0.0001", swept("--grid", "train.learning_rate=1e-4,0.0001"),
         ("train.learning_rate", "1e-4 and 0.0001", "one value", "list it once")),
    Case("grids", "true and True", swept("--grid", "train.gradient_checkpointing=true,True"), ("one value",)),
    Case("grids", "16 and 016", swept("--grid", "train.network_dim=16,016"), ("16 and 016", "one value (16)")),
    Case("grids", "one value in two spellings in a grid file", swept("--grid-file", "{tmp}/grid.toml"),
         ("train.learning_rate", "one value"),
         write("/grid.toml", '[grid]\n"train.learning_rate" = ["1e-4", 0.0001]\n')),
    Case("grids", "key of an expert not trained", swept("--grid", "experts.low.network_dim=16,32", base=SWEEP22),
         ("experts.low.network_dim", "give the same runs", "--expert high", "drop it from the grid")),
    Case("grids", "untrained expert beside a real axis",
         swept("--grid", "train.seed=1,2", "--grid", "experts.low.learning_rate=1e-4,2e-4", base=SWEEP22),
         ("experts.low.learning_rate", "give the same runs")),
    Case("grids", "--grid and --set", swept("--grid", "train.learning_rate=1e-4,2e-4", "--set",
                                            "train.learning_rate=3e-4"),
         ("train.learning_rate is given both in --grid and in --set", "drop one")),
    Case("grids", "--grid and --gpu-memory", swept("--grid", "resources.gpu_memory_gb=24,80", "--gpu-memory", "48"),
         ("both in --grid and in --gpu-memory",)),
    Case("grids", "--grid inside a table --set replaces",
         swept("--grid", "dataset.videos.0.target_frames=17,21", "--set",
               'dataset.videos=[{"name":"a","resolution":[960,544],"target_frames":[21]}]'),
         ("given both in --grid and in --set dataset.videos",)),
    Case("grids", "grid over a table and its key", swept("--grid", "train.seed=1,2", "--grid",
                                                         "train=1,2"), ("set the same value",)),
    Case("grids", "task t2v/i2v", swept("--grid", "model.task=t2v-A14B,i2v-A14B", base=SWEEP22),
         ("model.task", "the preset decides the task", "wan22-i2v-lightning")),
    Case("grids", "task in a grid file's nested table", swept("--grid-file", "{tmp}/grid.toml"),
         ("model.task", "the preset decides"), write("/grid.toml", '[grid.model]\ntask = ["t2v-1.3B", "t2v-14B"]\n')),
    Case("grids", "a resolution split by the grid's commas", swept("--grid", "dataset.videos.0.resolution=960,544"),
         ("dataset.videos.0.resolution takes 2 numbers, got '960'", "write it as 832x480")),
    Case("grids", "family", swept("--grid", "family=wan21,wan22"), ("family", "the preset decides")),
    Case("grids", "checked before the backend's dry run",
         swept("--grid", "train.learning_rate=1e-4,0.0001", "--backend", "modal", "--image",
               "ghcr.io/you/lora-gym-wan21:0.1.0"), ("one value",)),

    # --- sample prompts: text first, the --set form of samples.prompts, one line each
    Case("prompts", "options but no text", SAMPLES, ("line 1", "options but no prompt text",
                                                       "write the prompt first"),
         write("/prompts.txt", "--w 832 --h 480\n")),
    Case("prompts", "a frame count alone is no prompt", SAMPLES, ("no prompt text",),
         write("/prompts.txt", "a fox --f 33\n--f 33\n")),
    Case("prompts", "indented options alone", SAMPLES, ("line 2", "no prompt text"),
         write("/prompts.txt", "a fox\n   --d 7  \n")),
    Case("prompts", "a size per prompt", SAMPLES, ("--w is the same for every prompt", "samples.width=832"),
         write("/prompts.txt", "a fox --w 832\n")),
    Case("prompts", "steps per prompt", SAMPLES, ("--s", "samples.steps=30"), write("/prompts.txt",
                                                                                        "a fox --s 30\n")),
    Case("prompts", "--set prompts as strings", sets('samples.prompts=["a fox", "a cat"]', base=DRY),
         ('each item is a table', 'samples.prompts=\'[{"text": "a fox"}, {"text": "a cat"}]\'', "--samples FILE")),
    Case("prompts", "--set prompts in TOML", sets('samples.prompts=[{text = "a fox", frames = 33}]', base=DRY),
         ("is TOML", 'samples.prompts=\'[{"text": "a fox", "frames": 33}]\'')),
    Case("prompts", "--set prompts as plain text", sets("samples.prompts=a fox on a beach", base=DRY),
         ("samples.prompts is a list of tables", "--samples FILE")),
    Case("prompts", "--set a prompt over two lines", sets('samples.prompts=[{"text": "a fox\\non a beach"}]', base=DRY),
         ("samples.prompts.0.text", "one line", "join its lines")),
    Case("prompts", "--set a prompt with a paragraph separator",
         sets('samples.prompts=[{"text": "a fox\\u2029on a beach"}]', base=DRY), ("one line",)),
    Case("prompts", "a list's example is its own", sets("dataset.videos.0.target_frames=[21", base=DRY),
         ("dataset.videos.0.target_frames", "[21", "write it as [21] or 21")),
    Case("prompts", "a pattern's message is its field's", sets("model.vae=foo", base=DRY),
         ("model.vae", "owner/repo:path")),
    Case("prompts", "LORA_GYM_SET prompts in TOML", None, ("is TOML", '[{"text": "a fox"}]'),
         env=entry_env(LORA_GYM_SET=literal("'samples.prompts=[{text=\"a fox\"}]'"))),
    Case("prompts", "LORA_GYM_SET prompts as strings", None, ("each item is a table",),
         env=entry_env(LORA_GYM_SET="'samples.prompts=[\"a fox\"]'")),
    Case("prompts", "LORA_GYM_SET prompt over two lines", None, ("one line",),
         env=entry_env(LORA_GYM_SET=literal("'samples.prompts=[{\"text\": \"a fox\\non a beach\"}]'"))),

    # --- deep nesting: refused before any parser recurses
    Case("nesting", "--set lists 100000 deep", sets("dataset.videos.0.target_frames=" + deep_list(DEEP), base=DRY),
         ("dataset.videos.0.target_frames", "more than 16 levels deep", "check its brackets")),
    Case("nesting", "--set tables 100000 deep", sets("samples.prompts=[" + '{"a":' * DEEP + "1" + "}" * DEEP + "]",
                                                     base=DRY), ("more than 16 levels",)),
    Case("nesting", "--set one level too deep", sets("dataset.videos.0.target_frames=" + deep_list(MAX_NESTING + 1),
                                                     base=DRY), ("more than 16 levels",)),
    Case("nesting", "--set deep in a sweep", swept("--grid", "train.seed=1,2", "--set",
                                                   "dataset.videos.0.resolution=" + deep_list(DEEP)),
         ("more than 16 levels",)),
    Case("nesting", "LORA_GYM_SET 100000 deep", None, ("more than 16 levels",),
         env=entry_env(LORA_GYM_SET="dataset.videos.0.target_frames=" + deep_list(DEEP))),
    Case("nesting", "preset file 100000 deep", ["run", "--dry-run", "--preset", "{tmp}/deep.toml", "--dataset",
                                                "{dataset}"], ("deep.toml", "more than 16 levels"),
         write("/deep.toml", deep_toml(DEEP))),
    Case("nesting", "preset file 900 deep (parses, would not copy)", ["run", "--dry-run", "--preset", "{tmp}/deep.toml",
                                                                      "--dataset", "{dataset}"],
         ("more than 16 levels",), write("/deep.toml", deep_toml(900))),
    Case("nesting", "preset file of inline tables", ["run", "--dry-run", "--preset", "{tmp}/deep.toml", "--dataset",
                                                     "{dataset}"], ("more than 16 levels",),
         write("/deep.toml", "a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n")),
    Case("nesting", "LORA_GYM_PRESET file deep", None, ("deep.toml", "more than 16 levels"),
         write("/deep.toml", deep_toml(DEEP)), env=entry_env(LORA_GYM_PRESET="{tmp}/deep.toml")),
    Case("nesting", "grid file deep", swept("--grid-file", "{tmp}/grid.toml"), ("--grid-file", "more than 16 levels"),
         write("/grid.toml", "[grid]\nx = " + deep_list(DEEP) + "\n")),
]


def test_the_table_covers_each_class():
    counts = {cls: sum(c.cls == cls for c in CASES) for cls in ("grids", "prompts", "nesting")}
    assert len(CASES) >= 35 and min(counts.values()) >= 8, counts
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.cls}: {c.id}" for c in CASES])
def test_refused_before_anything_starts(case, tmp_path, dataset, capsys, monkeypatch):
    # arguments hold JSON's braces, so the placeholders are replaced, not formatted
    out, line = run_refused(case, tmp_path, dataset, capsys, monkeypatch,
                            lambda arg: arg.replace("{dataset}", str(dataset)).replace("{tmp}", str(tmp_path)))
    for word in case.words:
        assert word in line, f"{word!r} not in {line!r}"
    assert out == ""


# --- the same inputs through the installed programs (a real process: its recursion limit, its argv) ---------------

def test_the_console_programs_refuse_deep_values_in_one_line(tmp_path):
    deep = deep_list(60_000)  # 120 kB: under Linux's 128 kB cap on one argument or variable
    ds = str(ROOT / "examples/dataset")
    launcher = Path(sys.executable).parent / "launcher"
    runs = [subprocess.run([str(launcher), *[a.format(dataset=ds) for a in DRY], "--set",
                            f"dataset.videos.0.target_frames={deep}"], capture_output=True, text=True,
                           env=clean_env(), cwd=tmp_path),
            subprocess.run([sys.executable, "-m", "lora_gym_entrypoint"], capture_output=True, text=True, cwd=tmp_path,
                           env=clean_env(LORA_GYM_PRESET="wan21-t2v-1.3b", LORA_GYM_DRY_RUN="1",
                                         LORA_GYM_DATASET_DIR=ds, LORA_GYM_SET=f"dataset.videos.0.resolution={deep}"))]
    for result in runs:
        assert result.returncode == 2 and result.stdout == "" and list(tmp_path.iterdir()) == []
        assert result.stderr.count("\n") == 1 and "more than 16 levels deep" in result.stderr, result.stderr


# --- mechanisms, on generated input ----------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet="[]{}\"\\ab", max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                 max_size=3), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_the_bracket_scan_measures_what_json_would_build(data):
    """Brackets inside strings do not count; the scan and the parsed data agree on the depth."""
    assert bracket_depth(json.dumps(data)) == data_depth(data)


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(min_value=1, max_value=200_000), opener=st.sampled_from(["[", '{"a":', "[{\"b\":"]))
def test_any_depth_is_a_user_error_or_a_value_never_a_recursion_error(depth, opener):
    closer = {"[": "]", '{"a":': "}", "[{\"b\":": "}]"}[opener]
    value = opener * depth + "1" + closer * depth
    # Only a value that opens with `[` is parsed as JSON; any other is a string the schema refuses as such.
    deep = value.startswith("[") and depth * (opener.count("[") + opener.count("{")) > MAX_NESTING
    try:
        load_preset("wan21-t2v-1.3b", [f"dataset.videos.0.target_frames={value}"])
    except UserError as exc:
        assert all("\n" not in p for p in exc.problems)
        assert any("levels deep" in p for p in exc.problems) == deep, (depth, exc.problems)
        return
    assert not deep


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(min_value=1, max_value=5000), inline=st.booleans())
def test_toml_of_any_depth_is_data_or_one_user_error(depth, inline):
    text = "v = " + ("{a = " * depth + "1" + "}" * depth if inline else deep_list(depth))
    try:
        data = parse_toml(text, "mine.toml")
    except UserError as exc:
        assert exc.problems == [f"mine.toml nests lists or tables more than {MAX_NESTING} levels deep (no preset "
                                "value nests more than 5): check its brackets"]
        assert depth + 1 > MAX_NESTING
        return
    assert data_depth(data) == depth + 1 <= MAX_NESTING


SPELLINGS = [repr, "{:e}".format, "{:.20f}".format, "{:E}".format, lambda x: f"{x:.17g}", lambda x: f"0{x!r}"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.floats(min_value=1e-7, max_value=0.9), spellings=st.lists(st.sampled_from(SPELLINGS), min_size=2,
                                                                          max_size=2, unique=True))
def test_two_spellings_of_one_rate_are_one_value(rate, spellings):
    typed = [spell(rate) for spell in spellings]
    if float(typed[0]) != float(typed[1]) or typed[0] == typed[1]:
        return  # a spelling that rounds (%.20f of a tiny rate) is another value, or both are the same text
    axes = grid.combine([f"train.learning_rate={','.join(typed)}"], None)
    with pytest.raises(UserError, match="one value"):
        prepare_sweep("wan21-t2v-1.3b", None, (), str(ROOT / "examples/dataset"), axes, sweep_id="s")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rates=st.lists(st.sampled_from(["5e-5", "8e-5", "1e-4", "2e-4", "0.0003"]), min_size=2, max_size=3,
                      unique=True))
def test_distinct_values_sweep_one_run_each(rates):
    axes = grid.combine([f"train.learning_rate={','.join(rates)}"], None)
    sweep = prepare_sweep("wan21-t2v-1.3b", None, (), str(ROOT / "examples/dataset"), axes, sweep_id="s")
    got = [load_preset("wan21-t2v-1.3b", t.grid).preset.train.learning_rate for t in sweep.trainings]
    assert got == [float(r) for r in rates] and len(set(got)) == len(rates)


@given(st.lists(st.sampled_from(["--f 33", "--d 7", "--w 832", "--h 480", "--i a.png"]), min_size=1, max_size=4),
       st.sampled_from(["", " ", "  ", "\t"]))
def test_a_line_of_options_alone_is_refused_as_missing_text(options, indent):
    with pytest.raises(UserError, match="options but no prompt text"):
        parse_samples_file(indent + " ".join(options) + "\n", "prompts.txt")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=40)
       .filter(lambda t: t.strip() and "--" not in t and not t.strip().startswith("#")),
       st.integers(min_value=1, max_value=64), st.integers(min_value=0, max_value=2**32 - 1))
def test_text_then_options_parses_as_written(text, frames, seed):
    [entry] = parse_samples_file(f"{text} --f {4 * frames + 1} --d {seed}\n", "prompts.txt")
    assert entry == {"text": text.strip(), "frames": 4 * frames + 1, "seed": seed}


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=20), st.sampled_from(["\n", "\r", "\x0b", "\x0c", "\x85", "\u2028", "\u2029"]),
       st.text(min_size=1, max_size=20))
def test_a_prompt_with_a_line_break_is_refused_as_one(before, brk, after):
    value = json.dumps([{"text": f"a{before}{brk}{after}"}])
    with pytest.raises(UserError, match="one line") as exc:
        load_preset("wan21-t2v-1.3b", [f"samples.prompts={value}"])
    assert all("\n" not in p for p in exc.value.problems)


def test_a_local_sweep_without_an_engine_prints_no_plan(tmp_path, capsys, monkeypatch):
    """The engine and image checks come before the plan, like the grid's: the refusal is the only output."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    argv = swept("--grid", "train.seed=1,2", "--backend", "local", "--output", "{tmp}/runs")
    code = launcher_main([a.replace("{dataset}", str(ROOT / "examples/dataset")).replace("{tmp}", str(tmp_path))
                          for a in argv if a != "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("error: cannot reach Docker") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


LIST_TEXT = st.one_of(st.text(max_size=40), st.builds(lambda a, b: f"[{a}{b}]", st.text(max_size=20),
                                                     st.sampled_from(["", "}", "]", '"', "{text = 'x'}"])))


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["samples.prompts", "dataset.videos", "dataset.videos.0.target_frames",
                            "dataset.images.resolution"]), value=LIST_TEXT)
def test_any_list_value_is_data_or_one_line_per_problem(key, value):
    """Whatever text a list key gets (TOML, broken JSON, line breaks, brackets), each problem stays one line."""
    try:
        load_preset("wan21-t2v-1.3b", [f"{key}={value}"])
    except UserError as exc:
        assert exc.problems and all(len(p.splitlines()) == 1 for p in exc.problems), exc.problems
