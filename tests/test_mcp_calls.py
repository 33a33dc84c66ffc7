"""The MCP server's plumbing without a client: which input an error names, the estimate ids, the secret scrub."""

from __future__ import annotations

import pytest

pytest.importorskip("mcp")

from launcher.core.errors import UserError  # noqa: E402
from launcher.cost import Estimate, Quote  # noqa: E402
from launcher.mcp_server import calls, spend  # noqa: E402

RUN = {"run.preset": "wan21-t2v-1.3b", "run.dataset": "/data/annika", "run.overrides": [], "run.max_cost": 5.0,
       "run.gpu_type": None}


@pytest.mark.parametrize(("message", "named"), [
    ("--max-cost needs the time estimate of the media check: drop --no-check", "run.max_cost"),
    ("--set train.max_train_epochs=0: must be at least 1", "run.overrides"),
    ("train.learning_rate: must be above 0", "run.overrides"),
    ("/data/annika: no images or videos found", "run.dataset"),
    ("pick another --gpu", "run.gpu_type"),  # --gpu is not the start of --gpu-memory
    ("something else entirely", None),
])
def test_the_input_an_error_names(message, named):
    assert calls.input_named(message, RUN) == named


def test_an_estimate_id_covers_the_request_the_preset_and_the_amount():
    base = spend.estimate_id({"preset": "a"}, "sha", 1.234)
    assert base == spend.estimate_id({"preset": "a"}, "sha", 1.2349)  # the cents the user saw
    assert len({base, spend.estimate_id({"preset": "b"}, "sha", 1.234), spend.estimate_id({"preset": "a"}, "sha2",
                1.234), spend.estimate_id({"preset": "a"}, "sha", 1.3)}) == 4


def test_require_shown_takes_the_id_or_an_amount_that_covers_it():
    est = Estimate(hours=2.0, quote=Quote(gpu="RTX 4090", usd_per_hour=0.5))
    shown = spend.estimate_id({}, "sha", est.usd)
    spend.require_shown(est, {}, "sha", shown, None)
    spend.require_shown(est, {}, "sha", None, 1.0)
    for shown_id, usd in ((None, None), ("est-0000", None), (None, 0.99)):
        with pytest.raises(UserError):
            spend.require_shown(est, {}, "sha", shown_id, usd)


def test_a_secret_value_never_leaves_in_a_result(monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", 'rpa_se"cret')

    @calls.tool
    def leaky(text: str) -> dict:
        print(f"key {text}")
        raise UserError(f"bad key {text}: check RUNPOD_API_KEY")

    result = leaky(text='rpa_se"cret')
    assert result.isError and result.structuredContent["input"] == "text"
    assert 'rpa_se"cret' not in repr(result) and result.content[0].text == "error: bad key ***: check RUNPOD_API_KEY"
