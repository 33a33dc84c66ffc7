"""Our RunPod traffic held to RunPod's published OpenAPI document (tests/contracts/runpod-openapi.json).

The fake validates every request and answer against it (tests/fakes/fake_runpod.py); these tests show the
oracle itself can fail, and that what the backend builds for a real launch passes it.
"""

from __future__ import annotations

import copy

import pytest
from conftest import EXAMPLE_DATASET
from contracts.openapi import runpod as contract
from fakes.fake_runpod import GPUS, FakeRunPod

from launcher.backends import LaunchOptions, runpod
from launcher.core.job import prepare


def pod_body(expert=None, preset="wan21-t2v-1.3b") -> dict:
    job = prepare(preset, expert, [], EXAMPLE_DATASET, run_id="r1")
    return runpod.pod_body(job, LaunchOptions(dataset=str(EXAMPLE_DATASET)), expert, GPUS[0]["id"], "vol1",
                           "US-KS-2", 5.0)


def test_the_document_names_its_source():
    source = contract().doc["x-lora-gym-source"]
    assert source["document"].startswith("https://github.com/runpod/docs/") and source["commit_date"]
    assert contract().doc["openapi"].startswith("3.1")


@pytest.mark.parametrize(("expert", "preset"), [(None, "wan21-t2v-1.3b"), ("high", "wan22-t2v-lightning")])
def test_the_backends_pod_bodies_are_valid_create_pod_requests(expert, preset):
    assert contract().request_problems("POST", "/v2/pods", pod_body(expert, preset)) == []


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b.update(imageName=b.pop("image")), "imageName"),  # a renamed field
    (lambda b: b.update(gpuTypeIds=[b.pop("gpu")["id"]]), "gpuTypeIds"),  # the retired GraphQL-era shape
    (lambda b: b["mounts"]["network"][0].pop("path"), "'path' is a required property"),
    (lambda b: b.update(cloud="CHEAP"), "'CHEAP' is not one of"),
    (lambda b: b.pop("name"), "'name' is a required property"),
])
def test_a_body_the_api_would_refuse_is_caught(change, message):
    body = copy.deepcopy(pod_body())
    change(body)
    problems = contract().request_problems("POST", "/v2/pods", body)
    assert problems and any(message in p for p in problems), problems


def test_answers_are_checked_too():
    good = {"id": "v1", "name": "n", "size": 50, "dataCenter": "US-KS-2", "type": "STANDARD"}
    assert contract().response_problems("GET", "/v2/network-volumes/v1", 200, "application/json", good) == []
    partial = {k: v for k, v in good.items() if k != "dataCenter"}
    assert contract().response_problems("GET", "/v2/network-volumes/v1", 200, "application/json", partial)
    error = {"title": "Not Found", "status": 404, "detail": "pod not found"}
    assert contract().response_problems("GET", "/v2/pods/p1", 404, "application/problem+json", error) == []
    assert contract().response_problems("GET", "/v2/pods/p1", 404, "application/json", error)  # wrong media type
    assert contract().response_problems("DELETE", "/v2/pods/p1", 204, "", None) == []
    assert contract().request_problems("POST", "/v2/network-volumes", {"name": "v", "size": 5,
                                                                       "dataCenter": "US-KS-2"})  # minimum 10
    assert contract().request_problems("GET", "/v2/nowhere", None)


def test_the_fake_refuses_an_invalid_body_and_reports_it_at_exit():
    import httpx

    with pytest.raises(AssertionError, match="RunPod contract violations"), FakeRunPod() as fake:
        answer = httpx.post(f"{fake.url}/pods", json={"name": "x", "imageName": "img"},
                            headers={"Authorization": f"Bearer {fake.api_key}"})
        assert answer.status_code == 400 and answer.headers["content-type"] == "application/problem+json"
        assert any("imageName" in e for e in answer.json()["errors"])
