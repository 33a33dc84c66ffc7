"""report.html: one self-contained page per run folder (no network needed to view it).

From run.json (settings, steps, checkpoints, samples, each training's LoRA key check) and progress.json (each
training's loss history): the settings that matter, the loss curve per expert (matplotlib, embedded as PNG), the
contact sheets (embedded), the sample videos (linked beside the report in samples/), timings per step, what each
checkpoint is called, and the LoRA key check as the run recorded it and as it holds now on the files here.
The entrypoint writes it at every checkpoint musubi saves (a run in progress can be looked at) and at the end of a
run, when matplotlib is installed; `launcher report RUN_DIR` rewrites it.
A small inline script records load errors and broken images on the page (`data-check`), for the browser test.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from datetime import datetime
from pathlib import Path

from launcher.core import runfiles
from launcher.core.errors import UserError
from launcher.core.inputs import inside

REPORT = "report.html"
STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1c1c1f}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f6}img{max-width:100%}h2{margin-top:32px}code{font-size:12px}
.videos{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}video{width:240px}.failed{color:#b00020}"""
CHECK = """window.__errors=[];window.addEventListener('error',e=>window.__errors.push(String(e.message||e)));
window.addEventListener('load',()=>{const imgs=[...document.images];document.body.dataset.check=JSON.stringify(
{images:imgs.length,broken:imgs.filter(i=>!i.complete||i.naturalWidth===0).length,errors:window.__errors});});"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _table(rows, head=None) -> str:
    top = "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{top}{body}</table>"


def _data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def loss_plot(trainings: dict) -> bytes | None:
    """The loss moving average over steps, one line per training, as PNG; None without any history."""
    curves = {name: t["history"] for name, t in sorted(trainings.items()) if t.get("history")}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display in a container or on CI
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(9, 3.6), dpi=100)
    for name, history in curves.items():
        axes.plot([s for s, _ in history], [loss for _, loss in history], label=name, linewidth=1.6)
    axes.set(xlabel="step", ylabel="loss (musubi's moving average)", title="training loss")
    axes.grid(alpha=0.3)
    axes.legend()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    return buffer.getvalue()


def _settings(run: dict) -> str:
    preset, labels, s = run.get("preset", {}), run.get("image_labels") or {}, run.get("settings", {})
    from launcher import contract

    train, musubi = s.get("train", {}), labels.get("ai.loragym.musubi-commit") or contract.musubi_commit()
    rows = [("preset", f"{_esc(preset.get('name'))} ({_esc(preset.get('origin'))}, sha256 "
                       f"<code>{_esc(preset.get('sha256', '')[:16])}</code>)"),
            ("overrides", "<br>".join(f"<code>{_esc(o)}</code>" for o in preset.get("overrides", [])) or "none"),
            ("expert", _esc(run.get("expert") or "-")), ("task", _esc(s.get("model", {}).get("task"))),
            ("epochs / save every", f"{_esc(train.get('max_train_epochs'))} / "
                                    f"{_esc(train.get('save_every_n_epochs'))}"),
            ("image", _esc(", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "not recorded")),
            ("musubi-tuner", f"<code>{_esc(musubi)}</code>"),
            ("dataset", "<br>".join(f"{_esc(d['path'] or '.')}: {d['files']} {_esc(d['kind'])}s, sha256 "
                                    f"<code>{_esc(d['sha256'][:16])}</code>" for d in run.get("dataset", {}).get(
                                        "dirs", []))),
            ("status", f"{_esc(run.get('status'))} (exit code {_esc(run.get('exit_code'))})"
                       + (f'<br><span class=failed>{_esc(run["failure"].get("hint"))}</span>' if run.get("failure")
                          else "")),
            ("reason", _esc(run.get("reason"))) if run.get("reason") else None]
    return _table([(f"<b>{_esc(k)}</b>", v) for k, v in filter(None, rows)])


def _seconds(step: dict) -> str:
    try:
        took = datetime.fromisoformat(step["ended_at"]) - datetime.fromisoformat(step["started_at"])
    except (KeyError, TypeError, ValueError):
        return "-"
    return str(took)


def _steps(run: dict) -> str:
    rows = [(_esc(s["name"]), f"<span class={'failed' if s['status'] == 'failed' else 'ok'}>{_esc(s['status'])}"
             f"</span>", _esc(s.get("started_at") or "-"), _seconds(s)) for s in run.get("steps", [])]
    return _table(rows, ("step", "status", "started", "took"))


def _checkpoints(run: dict) -> str:
    rows = []
    for output in run.get("outputs", []):
        epoch = re.search(r"-(\d{6})\.safetensors$", output["path"])
        rows.append((f"<code>{_esc(output['path'])}</code>", str(int(epoch[1])) if epoch else "last",
                     f"{output['size']:,}", f"<code>{_esc(output['sha256'][:16])}</code>"))
    return _table(rows, ("file", "epoch", "bytes", "sha256")) if rows else "<p>no checkpoint written</p>"


def _sheet(run_dir: Path, path: str, number: int) -> str:
    """A contact sheet embedded; only a file inside the run folder (run.json names it, and may be edited)."""
    sheet = run_dir / path
    if not path or not inside(run_dir, sheet) or not sheet.is_file():
        return f"<p class=failed>contact sheet {_esc(path)} is not in this run folder: pull the run again</p>"
    return f'<img class="sheet" alt="contact sheet, prompt {number}" src="{_data_uri(sheet.read_bytes())}">'


def _samples(run_dir: Path, record: dict | None) -> str:
    if not record:
        return "<p>no samples (samples.enabled=false, or the run planned none)</p>"
    out = [f"<p>{_esc(record.get('note'))}. Status: <b>{_esc(record.get('status'))}</b>"
           + (f" (failed at {_esc(record.get('failed_step'))})" if record.get("failed_step") else "")
           + (f": <span class={'failed' if record.get('status') == 'failed' else 'ok'}>{_esc(record['reason'])}</span>"
              if record.get("reason") else "") + "</p>"]
    for number, prompt in enumerate(record.get("prompts", []), 1):
        out.append(f"<h3>prompt {number}: {_esc(prompt['text'])}</h3>")
        for sheet in (s for s in record.get("sheets", []) if s["prompt"] == number):
            out.append(_sheet(run_dir, sheet["path"], number))
        videos = [v for v in record.get("videos", []) if v["prompt"] == number]
        out.append('<div class="videos">' + "".join(
            f'<figure><video controls preload="metadata" src="{_esc(v["path"])}"></video><figcaption>epoch '
            f'{v["epoch"]}: <a href="{_esc(v["path"])}">{_esc(v["path"])}</a></figcaption></figure>' for v in videos)
            + "</div>")
    return "".join(out)


def _lora_checks(run: dict, fresh: dict) -> str:
    """Each training's LoRA key check: as the run recorded it, and as it holds now on the files here."""
    rows = []
    for step, record in sorted(run.get("lora_check", {}).items()):
        now = fresh.get(step)
        again = "-" if now is None else f"{_esc(now.status)}" + ("" if now.dit_checked else
                                                               " (DiT not here: names and shapes not re-checked)")
        files = record.get("files", [])
        status = f"<span class={'failed' if record['status'] == 'failed' else 'ok'}>{_esc(record['status'])}</span>"
        rows.append((_esc(step), status, again, f"<code>{_esc(record.get('dit'))}</code>",
                     f"{len(files)} file(s), {'/'.join(sorted({str(f['modules']) for f in files})) or 0} modules",
                     _esc((now and now.reason) or record.get("reason") or "every key on a DiT weight")))
    if not rows:
        return "<p>no LoRA checked (no training finished)</p>"
    return _table(rows, ("training", "at the end of the run", "now", "DiT", "LoRA", "result"))


def render(run_dir: Path, checks: dict | None = None) -> str:
    """The page; `checks` are fresh LoRA checks (launcher/loracheck.recheck), run here when not given."""
    if not (run_dir / "run.json").exists():
        raise UserError(f"{run_dir} has no run.json: give a run folder (pull it with `launcher pull`)")
    run = runfiles.read(run_dir / "run.json")
    progress = runfiles.read_if_there(run_dir / "progress.json") or {}
    plot = loss_plot(progress.get("trainings", {}))
    loss = f'<img id="loss" alt="loss curve" src="{_data_uri(plot)}">' if plot else "<p>no loss recorded</p>"
    if checks is None:
        from launcher import loracheck

        checks = loracheck.recheck(run_dir)
    title = f"LoRA Gym run {run.get('run_id', run_dir.name)}"
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_esc(title)}</title>"
            f"<style>{STYLE}</style><script>{CHECK}</script></head><body><h1>{_esc(title)}</h1>"
            f"<h2>Settings</h2>{_settings(run)}<h2>Loss</h2>{loss}<h2>Samples</h2>"
            f"{_samples(run_dir, run.get('samples'))}<h2>Checkpoints</h2>{_checkpoints(run)}"
            f"<h2>LoRA key check</h2>{_lora_checks(run, checks)}"
            f"<h2>Steps</h2>{_steps(run)}</body></html>\n")


def write(run_dir: str | Path, checks: dict | None = None) -> Path:
    """Write report.html whole: a temporary file renamed over it, so a reader (a browser refreshing a run in
    progress, rewritten at every checkpoint) never sees half a page."""
    run_dir = Path(run_dir)
    text = render(run_dir, checks)
    target = run_dir / REPORT
    tmp = target.with_name(f".{REPORT}.{os.getpid()}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
