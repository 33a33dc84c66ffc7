"""`launcher caption` with a key the service refuses, or echoes: through the real google-genai and replicate
clients against the loopback fakes, as in test_caption.py (whose helpers these are)."""

from __future__ import annotations

import contextlib

import pytest
import test_caption
from fakes.fake_gemini import FakeGemini, default_reply
from fakes.fake_replicate import FakeReplicate
from test_caption import FAST, GEMINI_KEY, REPLICATE_KEY, cli, expected, make_image

fast, media = test_caption.fast, test_caption.media  # its fixtures, here too


def test_keys_never_appear_in_output(media, monkeypatch, capsys, caplog, fast):
    caplog.set_level("DEBUG")
    with FakeGemini(api_key="some-other-key") as fake:  # rejects our key, and echoes it in the error
        monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
        monkeypatch.setenv("GEMINI_BASE_URL", fake.base_url)
        code, out, err = cli(capsys, media, "--anchor", "annika", "--rpm", FAST)
    assert code == 2 and "403" in err and "***" in err
    with FakeReplicate(api_token=REPLICATE_KEY, fail_with="model crashed") as fake:
        monkeypatch.setenv("REPLICATE_API_TOKEN", REPLICATE_KEY)
        monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
        code2, out2, err2 = cli(capsys, media, "--anchor", "annika", "--rpm", FAST, "--provider", "replicate")
    assert code2 == 1 and "model crashed" in out2
    for text in (out, err, out2, err2, caplog.text):
        assert GEMINI_KEY not in text and REPLICATE_KEY not in text


SECRET = "AIzaQ7vXk2Lm9Rt4Wz8Yp3Nb6Hc1Jd5Fg"  # no 4-character piece of it is in any other text of a run
REFUSALS = [  # provider, status, its name (Gemini) or title (Replicate)
    ("gemini", 401, "UNAUTHENTICATED"),
    ("gemini", 403, "PERMISSION_DENIED"),
    ("gemini", 400, "INVALID_ARGUMENT"),  # what Google answers for a key that does not exist (API_KEY_INVALID)
    ("replicate", 401, "Unauthenticated"),
    ("replicate", 403, "Forbidden"),
]


@contextlib.contextmanager
def refusing(provider: str, monkeypatch, status: int, name: str, message: str):
    """A fake of `provider` that accepts only another key, and refuses ours with `status` and `message`."""
    fake_kind, var, url_var = {"gemini": (FakeGemini, "GEMINI_API_KEY", "GEMINI_BASE_URL"),
                               "replicate": (FakeReplicate, "REPLICATE_API_TOKEN", "REPLICATE_BASE_URL")}[provider]
    with fake_kind("the-right-key") as fake:
        fake.refusal = (status, name, message)
        monkeypatch.setenv(var, SECRET)
        monkeypatch.setenv(url_var, fake.base_url)
        yield fake


def key_pieces(text: str, key: str = SECRET) -> list[str]:
    return [key[i:i + 4] for i in range(len(key) - 3) if key[i:i + 4] in text]


@pytest.mark.parametrize("provider, status, name", REFUSALS)
def test_a_refused_key_stops_the_run_at_the_first_answer_with_one_error_line(tmp_path, monkeypatch, capsys, fast,
                                                                             provider, status, name):
    images = [make_image(tmp_path / f"img{i:02}.png", i) for i in range(40)]
    with refusing(provider, monkeypatch, status, name, "denied: {key}") as fake:
        code, out, err = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", FAST, "--concurrency", "8",
                             "--provider", provider)
        sent = len(fake.requests)
    var = "GEMINI_API_KEY" if provider == "gemini" else "REPLICATE_API_TOKEN"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and not out and len(errors) == 1 and err.rstrip().endswith(errors[0])
    assert errors[0].startswith(f"error: the service refused the key in {var} (") and str(status) in errors[0]
    assert errors[0].endswith(f"set {var} to a valid key and run the same command again")
    assert 1 <= sent <= 8  # the requests already in flight when the first refusal came back, and no other
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in images)  # nothing written
    assert not key_pieces(out + err)


@pytest.mark.parametrize("provider, status, name", [REFUSALS[1], REFUSALS[3]])
@pytest.mark.parametrize("at", [0, 150, 185, 195, 199, 203, 260, 600])  # the reason is cut at 200 characters
def test_no_piece_of_a_refused_key_is_shown_wherever_the_service_echoes_it(tmp_path, monkeypatch, capsys, fast,
                                                                           provider, status, name, at):
    make_image(tmp_path / "one.png", 1)
    message = "denied " * 100
    with refusing(provider, monkeypatch, status, name, message[:at] + "{key}" + message) as fake:
        code, out, err = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", FAST, "--provider", provider)
    assert code == 2 and "error: the service refused the key" in err and fake.requests
    assert not key_pieces(out + err), err


# A file's reason is cut at 300 characters, and "ServerError: 599 None. {'error': {'code': 599, 'message':
# \"ValueError('" comes before the message: from 196 to 228 the key lies across the cut.
@pytest.mark.parametrize("at", [0, 150, 196, 205, 215, 222, 228, 240, 400])
def test_no_piece_of_the_key_is_shown_when_a_file_fails_with_an_error_that_echoes_it(tmp_path, monkeypatch, capsys,
                                                                                      fast, at):
    make_image(tmp_path / "one.png", 1)
    message = "broken " * 100

    def reply(prompt, media):  # the fake answers 599 with this in its message
        raise ValueError(message[:at] + SECRET + message)

    with FakeGemini(api_key=SECRET, reply=reply) as fake:
        monkeypatch.setenv("GEMINI_API_KEY", SECRET)
        monkeypatch.setenv("GEMINI_BASE_URL", fake.base_url)
        code, out, err = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", FAST)
    assert code == 1 and "failed: one.png: ServerError: 599" in out
    assert not key_pieces(out + err), out


@pytest.mark.parametrize("provider", ["gemini", "replicate"])
def test_captions_written_before_the_key_is_refused_are_kept_and_nothing_is_half_written(
        tmp_path, monkeypatch, capsys, fast, provider):
    images = [make_image(tmp_path / f"img{i:02}.png", i) for i in range(8)]
    with refusing(provider, monkeypatch, 401, "UNAUTHENTICATED", "key revoked") as fake:
        fake.api_key = fake.api_token = SECRET  # valid at first ...
        answered = []

        # ... revoked once the third caption is made: Gemini makes it as it answers, Replicate as the prediction
        # is created, and answers it at a later poll, so there the fourth prediction's creation revokes it.
        revoke_at = 3 if provider == "gemini" else 4

        def reply(prompt, media):
            answered.append(1)
            if len(answered) == revoke_at:
                fake.api_key = fake.api_token = "the-right-key"
            return default_reply("annika")(prompt, media)

        fake.reply = reply
        code, out, err = cli(capsys, tmp_path, "--anchor", "annika", "--rpm", FAST, "--concurrency", "1",
                             "--provider", provider)
    assert code == 2 and err.rstrip().endswith("run the same command again; the 3 captions written before it "
                                               "are kept"), err
    assert [p.with_suffix(".txt").read_text() for p in images[:3]] == [expected(p) for p in images[:3]]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([p.name for p in images] + [p.with_suffix(".txt").name for p in images[:3]])
