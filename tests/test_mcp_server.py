"""`launcher mcp` driven by the `mcp` SDK's own client over stdio, as an assistant drives it: a whole session on
the RunPod test doubles (tests/fakes/fake_runpod.py and moto's S3 server), a refused spend and a bad input."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid

import pytest
from conftest import ROOT, clean_env
from fakes.fake_runpod import FakeRunPod

from launcher import runs
from launcher.cli.main import main

pytest.importorskip("mcp")
boto3 = pytest.importorskip("boto3")

from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

API_KEY = "rpa_mcp-test-account-key"
S3_SECRET = "rps_MCP-S3-Secret-Value"
HF_SECRET = "hf_McpNeverLeavesThisMachine"
REGISTRY = "ghcr.io/lora-gym-test"
TOOLS = {"list_presets", "show_preset", "plan", "check_dataset", "caption", "estimate", "start", "status", "logs",
         "stop", "pull", "report_path"}


@pytest.fixture
def runpod(s3_url, tmp_path, monkeypatch):
    """The RunPod fake with a network volume whose bucket exists; the server's environment for both."""
    with FakeRunPod(api_key=API_KEY, uptime_scale=3600) as fake:
        volume = f"vol-{uuid.uuid4().hex[:8]}"
        fake.add_volume(volume)
        s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
        s3.create_bucket(Bucket=volume)
        env = {"LORA_GYM_HOME": str(tmp_path / "home"), "LORA_GYM_REGISTRY": REGISTRY, "RUNPOD_API_KEY": API_KEY,
               "RUNPOD_API_BASE_URL": fake.url, "RUNPOD_S3_ENDPOINT_URL": s3_url,
               "RUNPOD_S3_ACCESS_KEY_ID": "user_test", "RUNPOD_S3_SECRET_ACCESS_KEY": S3_SECRET,
               "HF_TOKEN": HF_SECRET}
        for name, value in env.items():  # the CLI run in this process for comparison sees the same
            monkeypatch.setenv(name, value)
        yield fake, volume, s3, env


def drive(env: dict, steps):
    """Start `launcher mcp` as a client would (a child process on stdio), initialize, and run `steps(call)`;
    `call(tool, **arguments)` returns the CallToolResult. Every result text is kept to check for secrets."""
    texts: list[str] = []

    async def session():
        server = StdioServerParameters(command=sys.executable, args=["-m", "launcher.cli.main", "mcp"],
                                       env=clean_env(**env), cwd=str(ROOT))
        async with stdio_client(server) as (read, write), ClientSession(read, write) as client:
            await client.initialize()

            async def call(tool, **arguments):
                result = await client.call_tool(tool, arguments)
                texts.extend(c.text for c in result.content)
                texts.append(json.dumps(result.structuredContent))
                return result

            await steps(client, call)

    asyncio.run(asyncio.wait_for(session(), timeout=120))
    return texts


def cli_json(argv: list[str], capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def without_run_id(document: dict) -> str:
    """A plan document with its run id (it carries the time it was made) replaced, to compare two plans."""
    run_id = document["plan"]["run_id"]
    return json.dumps(document, sort_keys=True).replace(run_id, "RUN")


def test_a_whole_session_on_the_runpod_doubles(dataset, runpod, capsys, tmp_path):
    fake, volume, s3, env = runpod
    run = {"preset": "wan21-t2v-1.3b", "dataset": str(dataset), "backend": "runpod", "volume": volume}
    cli_plan = cli_json(["run", "--preset", "wan21-t2v-1.3b", "--dataset", str(dataset), "--backend", "runpod",
                         "--volume", volume, "--dry-run", "--format", "json"], capsys)
    seen = {}

    async def steps(client, call):
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        presets = (await call("list_presets")).structuredContent["presets"]
        assert "wan21-t2v-1.3b" in [p["name"] for p in presets]
        schema = json.loads((await client.read_resource("lora-gym://schema")).contents[0].text)
        assert schema["$defs"]["Train"]["properties"]["max_train_epochs"]["maximum"] == 10_000
        preset = (await client.read_resource("lora-gym://presets/wan21-t2v-1.3b")).contents[0].text
        assert 'name = "wan21-t2v-1.3b"' in preset

        plan = await call("plan", run=run)
        assert not plan.isError and without_run_id(plan.structuredContent) == without_run_id(cli_plan)
        checked = await call("check_dataset", directory=str(dataset), preset="wan21-t2v-1.3b")
        assert not checked.isError and "4 images" in checked.structuredContent["output"]
        estimate = (await call("estimate", run=run)).structuredContent
        assert estimate["paid"] and estimate["usd"] > 0 and estimate["line"].startswith("estimate: ~")

        started = await call("start", run=run, estimate_id=estimate["estimate_id"])
        assert not started.isError, started.content[0].text
        run_id = seen["run_id"] = started.structuredContent["run_id"]
        assert started.structuredContent["detached"] and len(fake.pods) == 1
        reproduce = runs.load(run_id)["reproduce"]  # what `launcher run --from` starts again
        assert reproduce["dataset"]["path"] == str(dataset) and len(reproduce["dataset"]["files"]) == 12
        status = await call("status", run_id=run_id)
        assert "RUNNING" in status.structuredContent["output"]

        (pod_id,) = fake.pods
        for key, body in ((f"lora-gym/output/{run_id}/run.json", json.dumps({"run_id": run_id, "exit_code": 0})),
                          (f"lora-gym/output/{run_id}/lora.safetensors", "w" * 4096)):
            s3.put_object(Bucket=volume, Key=key, Body=body.encode())
        assert (await call("stop", run_id=run_id)).structuredContent["exit_code"] == 0
        assert fake.pods[pod_id]["status"] in ("EXITED", "TERMINATED")
        pulled = await call("pull", run_id=run_id, dest=str(tmp_path / "dl"))
        assert pulled.structuredContent["exit_code"] == 0, pulled.structuredContent
        report = (await call("report_path", run_id=run_id, dest=str(tmp_path / "dl"))).structuredContent
        seen["reports"] = report["reports"]

    texts = drive(env, steps)
    assert seen["reports"] == [str(tmp_path / "dl" / seen["run_id"] / "report.html")]
    assert (tmp_path / "dl" / seen["run_id"] / "report.html").is_file()
    for secret in (API_KEY, S3_SECRET, HF_SECRET):
        assert not any(secret in text for text in texts), secret


def test_a_paid_start_without_the_estimate_shown_is_refused(dataset, runpod):
    fake, volume, _, env = runpod
    run = {"preset": "wan21-t2v-1.3b", "dataset": str(dataset), "backend": "runpod", "volume": volume}
    found = {}

    async def steps(client, call):
        found["none"] = await call("start", run=run)
        estimate = (await call("estimate", run=run)).structuredContent
        found["other"] = await call("start", run={**run, "overrides": ["train.max_train_epochs=2"]},
                                    estimate_id=estimate["estimate_id"])
        found["less"] = await call("start", run=run, estimate_usd=estimate["usd"] / 2)
        found["budget"] = await call("start", run={**run, "max_cost": estimate["usd"] / 2},
                                     estimate_usd=estimate["usd"])

    drive(env, steps)
    for case, name in (("none", "estimate_id"), ("other", "estimate_id"), ("less", "estimate_usd"),
                       ("budget", "run.max_cost")):
        result = found[case]
        assert result.isError and result.structuredContent["input"] == name, (case, result.structuredContent)
        assert result.content[0].text.startswith("error: ") and "\n" not in result.content[0].text
    assert "over --max-cost" in found["budget"].content[0].text
    assert fake.created == [] and fake.pods == {}  # nothing was started, nothing bills


def test_a_bad_input_is_the_clis_one_line_naming_the_input(dataset, capsys):
    bad = ["train.max_train_epochs=0"]
    assert main(["run", "--preset", "wan21-t2v-1.3b", "--dataset", str(dataset), "--set", bad[0], "--dry-run"]) == 2
    cli_line = capsys.readouterr().err.strip()
    found = {}

    async def steps(client, call):
        found["override"] = await call("plan", run={"preset": "wan21-t2v-1.3b", "dataset": str(dataset),
                                                     "overrides": bad})
        found["dataset"] = await call("plan", run={"preset": "wan21-t2v-1.3b", "dataset": str(dataset / "nope")})
        found["preset"] = await call("show_preset", preset="wan21-t2v-1.3")
        found["caption"] = await call("caption", directory=str(dataset), anchor="annika", overwrite=True)

    drive({}, steps)
    # Captioning is a dry run unless asked: it lists the files and sends nothing (no key is set here).
    assert not found["caption"].isError and found["caption"].structuredContent["dry_run"]
    assert "would caption 6 files" in found["caption"].structuredContent["output"]
    assert found["override"].isError and found["override"].content[0].text == cli_line
    for case, name in (("override", "run.overrides"), ("dataset", "run.dataset"), ("preset", "preset")):
        assert found[case].structuredContent["input"] == name, found[case].structuredContent
        assert re.fullmatch(r"error: [^\n]+", found[case].content[0].text)


NOISY_SERVER = """
import os, sys
from launcher.mcp_server import server
from launcher.mcp_server.calls import tool

built = server.build

def build():  # the real server plus a tool that prints as a backend, an SDK and a child process might
    app = built()

    def noise() -> dict:
        print("printed by python")
        os.write(1, b"written to file descriptor 1\\n")
        os.system("echo printed by a child process")
        return {"ok": True}

    app.add_tool(tool(noise), name="noise")
    return app

server.build = build
sys.exit(server.serve())
"""


def test_nothing_printed_reaches_the_protocol_channel(tmp_path):
    found = {}
    errlog = (tmp_path / "stderr.txt").open("w+")

    async def session():
        params = StdioServerParameters(command=sys.executable, args=["-c", NOISY_SERVER], env=clean_env(),
                                       cwd=str(ROOT))
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            found["noise"] = await client.call_tool("noise", {})
            found["presets"] = await client.call_tool("list_presets", {})

    asyncio.run(asyncio.wait_for(session(), timeout=60))
    assert not found["noise"].isError and not found["presets"].isError
    assert found["presets"].structuredContent["presets"]
    # Python's prints are the tool's output; what bypasses sys.stdout went to stderr, not into the protocol.
    assert found["noise"].structuredContent["output"] == "printed by python\n"
    errlog.seek(0)
    stderr = errlog.read()
    assert "written to file descriptor 1" in stderr and "printed by a child process" in stderr
