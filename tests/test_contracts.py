"""Our provider traffic held to the providers' published OpenAPI documents (tests/contracts/).

The fakes validate every request and answer against them (tests/fakes/fake_runpod.py, fake_replicate.py);
these tests show that the oracle itself can fail, that the stored documents are whole, and that what the
RunPod backend builds for a real launch passes.
"""

from __future__ import annotations

import copy

import httpx
import pytest
from conftest import EXAMPLE_DATASET
from contracts import openapi
from contracts.trim_openapi import closure
from fakes.fake_replicate import FakeReplicate
from fakes.fake_runpod import GPUS, FakeRunPod

from launcher.backends import LaunchOptions, runpod
from launcher.core.job import prepare

RUNPOD_OPS = {("get", "/v2/catalog/gpus"), ("get", "/v2/network-volumes"), ("post", "/v2/network-volumes"),
              ("get", "/v2/network-volumes/{id}"), ("post", "/v2/pods"), ("get", "/v2/pods/{id}"),
              ("delete", "/v2/pods/{id}"), ("get", "/v2/pods/{id}/logs"), ("post", "/v2/pods/{id}/action")}
REPLICATE_OPS = {("post", "/files"), ("delete", "/files/{file_id}"), ("post", "/predictions"),
                 ("post", "/models/{model_owner}/{model_name}/predictions"), ("get", "/predictions/{prediction_id}"),
                 ("post", "/predictions/{prediction_id}/cancel")}
JSON, PROBLEM = "application/json", "application/problem+json"


def pod_body(expert=None, preset="wan21-t2v-1.3b") -> dict:
    job = prepare(preset, expert, [], EXAMPLE_DATASET, run_id="r1")
    image = f"ghcr.io/you/lora-gym-{job.loaded.preset.family}:0.1.0"  # RunPod refuses to send a bare local tag
    return runpod.pod_body(job, LaunchOptions(dataset=str(EXAMPLE_DATASET), image=image), expert, GPUS[0]["id"],
                           "vol1", "US-KS-2", 5.0)


def prediction(**changes) -> dict:
    urls = {"web": "https://replicate.com/p/p1", "get": "https://api.replicate.com/v1/predictions/p1",
            "cancel": "https://api.replicate.com/v1/predictions/p1/cancel"}
    body = {"id": "p1", "model": "google/gemini-2.5-flash", "version": "", "input": {"prompt": "x"},
            "output": None, "data_removed": False, "error": None, "status": "starting",
            "created_at": "2026-01-01T00:00:00Z", "urls": urls}
    return {k: v for k, v in {**body, **changes}.items() if v is not ...}


@pytest.mark.parametrize(("contract", "ops", "origin"), [
    (openapi.runpod, RUNPOD_OPS, "https://github.com/runpod/docs/"),
    (openapi.replicate, REPLICATE_OPS, "https://api.replicate.com/openapi.json"),
])
def test_each_document_names_its_source_and_holds_exactly_our_operations_whole(contract, ops, origin):
    doc = contract().doc
    assert contract().source["document"].startswith(origin) and contract().source["commit_date"]
    assert doc["openapi"].startswith("3.1") and contract().source["trimmed"]
    held = {(m, p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    assert held == ops
    components = {f"#/components/{s}/{n}" for s, entries in doc["components"].items() for n in entries}
    schemes = {f"#/components/securitySchemes/{n}" for r in doc["security"] for n in r}
    assert closure(doc, doc["paths"]) | schemes == components  # nothing dangling, nothing extra


@pytest.mark.parametrize(("expert", "preset", "registry"), [(None, "wan21-t2v-1.3b", None),
                                                         ("high", "wan22-t2v-lightning", "6n2k8v4d")])
def test_the_backends_pod_bodies_are_valid_create_pod_requests(expert, preset, registry, monkeypatch):
    if registry:  # a private image: the id of a RunPod registry credential, in the body's `registry`
        monkeypatch.setenv("RUNPOD_REGISTRY_AUTH_ID", registry)
    body = pod_body(expert, preset)
    assert body.get("registry") == registry
    assert openapi.runpod().request_problems("POST", "/v2/pods", body) == []


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b.update(imageName=b.pop("image")), "imageName"),  # a renamed field
    (lambda b: b.update(gpuTypeIds=[b.pop("gpu")["id"]]), "gpuTypeIds"),  # the retired GraphQL-era shape
    (lambda b: b["gpu"].update(typeId=b["gpu"].pop("id")), "typeId"),
    (lambda b: b["mounts"]["network"][0].pop("path"), "'path' is a required property"),
    (lambda b: b.update(cloud="CHEAP"), "'CHEAP' is not one of"),
    (lambda b: b.update(disk=b["disk"] + 0.5), "is not of type 'integer'"),
    (lambda b: b.pop("name"), "'name' is a required property"),
    (lambda b: b.update(containerRegistryAuthId="6n2k8v4d"), "containerRegistryAuthId"),  # v1's name for `registry`
])
def test_a_pod_body_the_api_would_refuse_is_caught(change, message):
    body = copy.deepcopy(pod_body())
    change(body)
    problems = openapi.runpod().request_problems("POST", "/v2/pods", body)
    assert problems and any(message in p for p in problems), problems


def test_runpod_answers_parameters_and_credentials_are_checked_too():
    contract, bearer = openapi.runpod(), {"Authorization": "Bearer rpa_x"}
    good = {"id": "v1", "name": "n", "size": 50, "dataCenter": "US-KS-2", "type": "STANDARD"}
    assert contract.response_problems("GET", "/v2/network-volumes/v1", 200, JSON, good) == []
    partial = {k: v for k, v in good.items() if k != "dataCenter"}
    assert contract.response_problems("GET", "/v2/network-volumes/v1", 200, JSON, partial)
    error = {"title": "Not Found", "status": 404, "detail": "pod not found"}
    assert contract.response_problems("GET", "/v2/pods/p1", 404, PROBLEM, error) == []
    assert contract.response_problems("GET", "/v2/pods/p1", 404, JSON, error)  # wrong media type
    assert contract.response_problems("DELETE", "/v2/pods/p1", 204, "", None) == []
    assert contract.request_problems("POST", "/v2/network-volumes", {"name": "v", "size": 5,
                                                                     "dataCenter": "US-KS-2"})  # minimum 10
    assert contract.request_problems("GET", "/v2/nowhere", None)
    logs = "/v2/pods/p1/logs"
    assert contract.parameter_problems("GET", logs, {"source": ["container"], "tail": ["5000"]}, bearer) == []
    for query, message in [({"tail": ["5001"]}, "maximum of 5000"), ({"source": ["stdout"]}, "is not one of"),
                           ({"follow": ["1"]}, "no query parameter 'follow'")]:
        assert any(message in p for p in contract.parameter_problems("GET", logs, query, bearer)), query
    assert contract.parameter_problems("GET", "/v2/pods/p1", {}, {"Authorization": "rpa_x"})  # not Bearer


def test_the_runpod_fake_refuses_an_invalid_request_and_reports_it_at_exit():
    with pytest.raises(AssertionError, match="RunPod contract violations"), FakeRunPod() as fake:
        answer = httpx.post(f"{fake.url}/pods", json={"name": "x", "imageName": "img"},
                            headers={"Authorization": f"Bearer {fake.api_key}"})
        assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM
        assert any("imageName" in e for e in answer.json()["errors"])


def test_the_runpod_fake_answers_as_the_document_says():
    with FakeRunPod() as fake:
        assert openapi.runpod().response_problems("GET", "/v2/pods/p1", 200, JSON, fake.add_pod("p1")) == []
        fake.log("p1", "one", "two", "three")
        bearer = {"Authorization": f"Bearer {fake.api_key}"}
        first = httpx.get(f"{fake.url}/pods/p1/logs", params={"tail": 2}, headers=bearer).text.split("\n\n")
        assert [e.split("\n")[0].rsplit("/", 1)[1] for e in first if e] == ["000000000002", "000000000003"]
        resumed = httpx.get(f"{fake.url}/pods/p1/logs", headers={**bearer, "Last-Event-ID": first[0][4:].split()[0]})
        assert '"line": "three"' in resumed.text and '"two"' not in resumed.text


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/predictions", {"version": "v1", "inputs": {}}, "'inputs' was unexpected"),  # a renamed field
    ("/predictions", {"input": {}}, "'version' is a required property"),
    ("/models/google/gemini-2.5-flash/predictions", {"model": "google/gemini-2.5-flash", "input": {}},
     "'model' was unexpected"),
    ("/models/google/gemini-2.5-flash/predictions", {"input": {}, "webhook_events_filter": ["done"]},
     "'done' is not one of"),
])
def test_a_prediction_request_replicate_would_refuse_is_caught(path, body, message):
    problems = openapi.replicate().request_problems("POST", path, body)
    assert any(message in p for p in problems), problems


def test_replicate_uploads_answers_and_headers_are_checked():
    contract = openapi.replicate()
    form = "multipart/form-data; boundary=x"
    assert contract.request_problems("POST", "/files", {"content": b"\x00\x01", "metadata": b"{}"}, form) == []
    assert any("'content' is a required" in p for p in contract.request_problems("POST", "/files",
                                                                                 {"file": b"x"}, form))
    assert contract.request_problems("POST", "/files", {"content": "x"}, JSON)  # not multipart
    assert contract.response_problems("GET", "/predictions/p1", 200, JSON, prediction()) == []  # error: null
    for wrong, message in [(prediction(urls={"get": "g", "cancel": "c"}), "'web' is a required property"),
                           (prediction(data_removed=...), "'data_removed' is a required property"),
                           (prediction(status="done"), "'done' is not one of"),
                           (prediction(started_at=None), "None is not of type 'string'")]:
        assert any(message in p for p in contract.response_problems("GET", "/predictions/p1", 200, JSON, wrong))
    assert contract.response_problems("DELETE", "/files/f1", 404, PROBLEM, {"detail": "File not found"}) == []
    assert contract.response_problems("DELETE", "/files/f1", 200, JSON, {})  # not an answer it lists
    assert contract.parameter_problems("POST", "/predictions", {}, {"Prefer": "wait=100",
                                                                    "Authorization": "Bearer r8_x"})


def test_the_replicate_fake_refuses_an_invalid_request_and_reports_it_at_exit():
    with pytest.raises(AssertionError, match="Replicate contract violations"), FakeReplicate() as fake:
        answer = httpx.post(f"{fake.base_url}/v1/predictions", json={"version": "v1", "inputs": {}},
                            headers={"Authorization": f"Bearer {fake.api_token}"})
        assert answer.status_code == 422 and "'inputs' was unexpected" in answer.json()["detail"]
