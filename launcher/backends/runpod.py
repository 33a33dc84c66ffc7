"""The RunPod backend: the same pinned image and environment contract, on a RunPod GPU pod.

One network volume per family (`lora-gym-<family>`, or `--volume ID`) holds everything, mounted at /workspace:
the dataset (content-addressed under lora-gym/datasets/, uploaded through the S3-compatible API), the caches
(reused by the next run) and the run folders under lora-gym/output/. Pods are described once as data
(pod_body): `--dry-run` prints the exact JSON bodies and `launch` posts them. The pod ends itself: the
entrypoint terminates its own pod when the job ends and enforces LORA_GYM_MAX_HOURS (entrypoints/pod.py), so
nothing depends on this machine staying up. httpx and boto3 are imported only when RunPod is called.
The bodies themselves, and why the container runs as root, are in runpod_pods.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from launcher import cost, runs
from launcher.backends import Capabilities, LaunchOptions
from launcher.backends.runpod_gpus import (
    HOST_RAM_SAID_GB,
    choose_gpu,
    host_ram_note,
    offline_catalog,
    ranked_gpus,
    save_catalog,
    unknown_but_not_misspelled,
)
from launcher.backends.runpod_pods import (
    DEFAULT_DATACENTER,
    ROOT,
    check_pull,
    dataset_key,
    experts,
    pod_body,
    preset_key,
    pull_note,
    quote_for,
    volume_id,
)
from launcher.core.errors import UserError
from launcher.core.job import Job

VOLUME_GB = 200  # slim images keep downloaded weights here too (about 130 GB for a family), plus caches
ENDED = ("TERMINATED", "EXITED", "ERROR")
DEFAULT_BASE_URL = "https://api.runpod.io/v2"  # as runpod_api's, which imports httpx: dry runs must not


# --- the backend ---------------------------------------------------------------------------------------

class RunPodBackend:
    capabilities = Capabilities(name="runpod", max_runtime_hours=None, detach=True)
    FOLLOW_IDLE_S = 30.0  # `logs --follow`: reconnect (and check the pod) after this long without a line
    TAIL_IDLE_S = 3.0  # `logs`: the backfill is over once the stream is quiet this long
    RECONNECT_S = 2.0  # pause before reopening a log stream the server closed

    def __init__(self):
        self._api = None
        self._catalog: list[dict] | None = None

    def api(self):
        if self._api is None:
            from launcher.backends.runpod_api import RunPodAPI, api_key

            self._api = RunPodAPI(api_key())
        return self._api

    def catalog(self) -> list[dict]:
        if self._catalog is None:
            if os.environ.get("RUNPOD_API_KEY"):
                self._catalog = self.api().gpu_types()
                save_catalog(self._catalog)
            else:
                self._catalog = offline_catalog()[0]
        return self._catalog

    def check(self, job: Job, options: LaunchOptions) -> None:
        check_pull(job, options)

    def quote(self, job: Job, options: LaunchOptions) -> cost.Quote:
        return quote_for(job, choose_gpu(self.catalog(), options.gpu_type, job.loaded.preset.resources.gpu_memory_gb))

    def _hours(self, job: Job, options: LaunchOptions, quote: cost.Quote) -> float:
        return cost.hour_limit(options.max_hours, job.loaded.preset.resources.time_limit_hours, options.max_cost,
                               quote)

    def dry_run_data(self, job: Job, options: LaunchOptions) -> dict:
        """What `launch` would send, as data; --gpu is checked against the offline catalog, without a key."""
        self._catalog, source = offline_catalog()
        if options.gpu_type and unknown_but_not_misspelled(options.gpu_type, self._catalog):
            # Perhaps newer than our snapshot: the launch checks it against the live catalog.
            self._catalog.append({"id": options.gpu_type, "memory": None, "price": {}})
            source = f"nothing: {options.gpu_type!r} is not in {source}; the launch checks it with RunPod"
        quote = self.quote(job, options)
        hours = self._hours(job, options, quote)
        volume = volume_id(options) or f"<id of network volume lora-gym-{job.loaded.preset.family}>"
        datacenter = None if options.volume else os.environ.get("RUNPOD_DATACENTER", DEFAULT_DATACENTER)
        base = (os.environ.get("RUNPOD_API_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        return {"upload": {"from": str(options.dataset), "to": f"s3://{volume}/{dataset_key(job)}/",
                           "note": "RunPod S3 API; unchanged files are skipped"},
                "pods": [{"request": f"POST {base}/pods", "expert": expert,
                          "body": pod_body(job, options, expert, quote.gpu, volume, datacenter, hours)}
                         for expert in experts(job)],
                "gpu": {"id": quote.gpu, "count": quote.gpus, "usd_per_hour": quote.usd_per_hour,
                        "price_source": quote.source, "checked_against": source},
                "hours_limit": float(f"{hours:.4g}"),
                "host_ram_gb": job.plan.resources.host_memory_gb}

    def dry_run(self, job: Job, options: LaunchOptions) -> str:
        data = self.dry_run_data(job, options)
        up, gpu, pods = data["upload"], data["gpu"], data["pods"]
        lines = [f"# upload {up['from']} -> {up['to']} ({up['note']})"]
        for n, pod in enumerate(pods, 1):
            expert = f", expert {pod['expert']}" if pod["expert"] else ""
            lines += [f"# {pod['request']} (pod {n} of {len(pods)}{expert})", json.dumps(pod["body"], indent=2)]
        lines.append(f"# {len(pods)} x {gpu['id']} at ${gpu['usd_per_hour']:.2f}/h ({gpu['price_source']}); each pod "
                     f"terminates itself when its job ends, or after {data['hours_limit']:.4g} h")
        lines.append(f"# GPU checked against {gpu['checked_against']}")
        lines += [pull_note(job, options), host_ram_note(job)]
        return "\n".join(lines)

    # --- launch -----------------------------------------------------------------------------------------

    def _volume(self, job: Job, options: LaunchOptions) -> dict:
        api = self.api()
        if volume_id(options):
            return api.network_volume(options.volume)
        name = f"lora-gym-{job.loaded.preset.family}"
        found = next((v for v in api.network_volumes() if v.get("name") == name), None)
        if found:
            return found
        datacenter = os.environ.get("RUNPOD_DATACENTER", DEFAULT_DATACENTER)
        print(f"launcher: creating network volume {name} ({VOLUME_GB} GB in {datacenter})", file=sys.stderr)
        return api.create_network_volume({"name": name, "dataCenter": datacenter, "size": VOLUME_GB})

    def _upload(self, job: Job, options: LaunchOptions, volume: dict) -> None:
        from launcher.backends import runpod_s3

        s3 = runpod_s3.client(volume["dataCenter"])
        sent = runpod_s3.upload_dir(s3, volume["id"], Path(options.dataset), dataset_key(job))
        if preset_key(job):
            sent += runpod_s3.upload_files(s3, volume["id"], [(Path(job.loaded.origin), preset_key(job))], "preset")
        print(f"launcher: dataset on volume {volume['id']} ({sent / 1e6:.1f} MB sent)", file=sys.stderr)

    def _place(self, job: Job, options: LaunchOptions, expert: str | None, volume: dict,
               env: dict[str, str] | None = None) -> dict:
        """Create the pod on the first GPU RunPod places, trying the candidates in order; its record entry.
        `env` adds to the pod's contract (a sweep's LORA_GYM_STAGE and run id)."""
        from launcher.backends.runpod_api import NotPlaced

        ranked = ranked_gpus(self.catalog(), options.gpu_type, job.loaded.preset.resources.gpu_memory_gb)
        refused, last = [], None
        for gpu in ranked:
            quote = quote_for(job, gpu)
            hours = self._hours(job, options, quote)
            body = pod_body(job, options, expert, gpu["id"], volume["id"], volume["dataCenter"], hours)
            body["env"] |= env or {}
            try:
                pod = self.api().create_pod(body)
            except NotPlaced as exc:
                refused.append(f"{gpu['id']}: {exc.status}")
                print(f"launcher: RunPod did not place {gpu['id']} in {volume['dataCenter']} ({exc.status})"
                      + ("; trying the next GPU" if gpu is not ranked[-1] else ""), file=sys.stderr)
                last = exc
                continue
            return {"id": pod["id"], "expert": expert, "run_id": body["env"]["LORA_GYM_RUN_ID"], "gpu": gpu["id"],
                    "usd_per_hour": quote.usd_per_hour, "max_hours": hours}
        raise UserError(f"RunPod placed none of {', '.join(refused)} in {volume['dataCenter']} (last: {last}): "
                        "try again later, pick another --gpu, or use a volume in another datacenter (--volume)")

    def launch(self, job: Job, options: LaunchOptions) -> int:
        from launcher.backends import runpod_s3

        check_pull(job, options)  # a bad image, credential id, key or S3 key fails before anything is created
        self.api()
        runpod_s3.client(DEFAULT_DATACENTER)
        quote = self.quote(job, options)
        hours = self._hours(job, options, quote)
        volume = self._volume(job, options)
        self._upload(job, options, volume)
        record = {"run_id": job.plan.run_id, "backend": "runpod", "preset": job.plan.preset,
                  "expert": job.plan.expert, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                  "volume": {"id": volume["id"], "dataCenter": volume["dataCenter"]}, "max_hours": hours,
                  "gpu": quote.gpu, "usd_per_hour": quote.usd_per_hour, "pods": []}
        try:
            for expert in experts(job):
                record["pods"].append(self._place(job, options, expert, volume))
                runs.save(record)  # at once: `launcher stop` must find every pod that was created
        except BaseException:
            for pod in record["pods"]:  # half a run is not left billing
                with contextlib.suppress(UserError):
                    self.api().terminate_pod(pod["id"])
            raise
        if job.plan.resources.host_memory_gb > HOST_RAM_SAID_GB:  # block swap or offload: RAM matters
            print(f"launcher: {host_ram_note(job)[2:]}", file=sys.stderr)
        ids = ", ".join(f"{p['id']} on {p['gpu']} at ${p['usd_per_hour']:.2f}/h" for p in record["pods"])
        print(f"launcher: run {job.plan.run_id} started on RunPod (pods {ids}); it stops itself after {hours:.4g} h. "
              f"`launcher status {job.plan.run_id}`, `launcher logs {job.plan.run_id} --follow`, "
              f"`launcher pull {job.plan.run_id}`", file=sys.stderr)
        return self.logs(record, follow=True) if options.follow else 0

    # --- the verbs --------------------------------------------------------------------------------------

    def status(self, record: dict) -> dict:
        rows, total = {"run": record["run_id"], "volume": f"{record['volume']['id']} "
                                                          f"({record['volume']['dataCenter']})"}, 0.0
        for pod in record["pods"]:
            live = self.api().pod(pod["id"]) or {"status": "TERMINATED"}
            rate = float(live.get("cost") or 0)
            uptime = (live.get("runtime") or {}).get("uptime")
            if uptime:  # remembered: an ended pod reports neither uptime nor rate any more
                pod["uptime_s"], pod["usd_per_hour"] = uptime, rate or record["usd_per_hour"]
            uptime_h = pod.get("uptime_s", 0) / 3600
            so_far = uptime_h * pod.get("usd_per_hour", record["usd_per_hour"])
            total += so_far
            rows[f"pod {pod['expert'] or pod['id']}"] = (f"{pod['id']} {live['status']}, {record['gpu']} at "
                                                         f"${rate:.2f}/h, up {uptime_h:.2f} h, ${so_far:.2f} so far")
        runs.save(record)
        rows["cost so far"] = f"${total:.2f} (uptime x $/h; volume storage billed separately)"
        rows["limit"] = f"{record.get('max_hours', 0):.4g} h per pod, enforced by the pod"
        return rows | self._progress_rows(record)

    def _progress_rows(self, record: dict) -> dict:
        """Each pod's progress.json on the volume (the entrypoint writes it every few seconds); needs the S3 keys."""
        from launcher.backends import runpod_s3
        from launcher.core.progress import status_line

        if not runpod_s3.has_keys():
            return {"progress": "set the RunPod S3 keys to see it (or `launcher logs`)"}
        s3, rows = runpod_s3.client(record["volume"]["dataCenter"]), {}
        for pod in record["pods"]:
            data = runpod_s3.read_json(s3, record["volume"]["id"], f"{ROOT}/output/{pod['run_id']}/progress.json")
            label = f"progress {pod['expert']}" if pod["expert"] else "progress"
            rows[label] = status_line(data, datetime.now(UTC).isoformat(timespec="seconds")) if data else "none yet"
        return rows

    def _follow_pod(self, pod: dict, prefix: str, follow: bool) -> None:
        last = None
        while True:
            idle = self.FOLLOW_IDLE_S if follow else self.TAIL_IDLE_S
            for event_id, event in self.api().log_events(pod["id"], last, idle):
                last = event_id or last
                print(f"{prefix}{event.get('line', '')}", flush=True)
            live = self.api().pod(pod["id"]) if follow else None
            if not follow or live is None or live.get("status") in ENDED:
                return
            time.sleep(self.RECONNECT_S)

    def _exit_status(self, record: dict) -> int:
        from launcher.backends import runpod_s3

        if not runpod_s3.has_keys():
            return 0  # the outcome is in run.json on the volume; without S3 keys the logs must say
        s3 = runpod_s3.client(record["volume"]["dataCenter"])
        codes = []
        for pod in record["pods"]:
            manifest = runpod_s3.read_json(s3, record["volume"]["id"], f"{ROOT}/output/{pod['run_id']}/run.json")
            codes.append(1 if manifest is None else manifest.get("exit_code") or 0)
        return next((c for c in codes if c), 0)

    def logs(self, record: dict, follow: bool) -> int:
        pods = record["pods"]
        # each pod's lines prefixed by its expert, or by its run id in a sweep (`label`)
        prefixes = [f"[{p.get('label') or p['expert']}] " if len(pods) > 1 else "" for p in pods]
        threads = [threading.Thread(target=self._follow_pod, args=(p, prefix, follow), daemon=True)
                   for p, prefix in zip(pods, prefixes, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
        return self._exit_status(record) if follow else 0

    def stop(self, record: dict) -> int:
        for pod in record["pods"]:
            self.api().terminate_pod(pod["id"])
            print(f"terminated pod {pod['id']}{' (' + pod['expert'] + ')' if pod['expert'] else ''}")
        return 0

    def pull(self, record: dict, dest: str) -> int:
        from launcher.backends import runpod_s3

        s3 = runpod_s3.client(record["volume"]["dataCenter"])
        missing = 0
        for pod in record["pods"]:
            target = Path(dest) / pod["run_id"]
            fetched = runpod_s3.download_prefix(s3, record["volume"]["id"], f"{ROOT}/output/{pod['run_id']}", target)
            if fetched < 0:
                missing += 1
                print(f"error: no output for {pod['run_id']} on the volume yet: see `launcher status "
                      f"{record['run_id']}`", file=sys.stderr)
            else:
                print(f"{target}: {fetched} files downloaded, the rest already complete")
        return 1 if missing else 0

