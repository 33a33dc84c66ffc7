"""Fake wan_train_network (test double): checks argv, trains epoch by epoch on paper, writes stand-in files.

Like musubi-tuner v0.3.4: it prints "override steps ...: <total>", runs `--max_train_epochs` epochs of
FAKE_MUSUBI_STEPS_PER_EPOCH (default 3) steps on the learning-rate schedule musubi would build (emulated in
_fake_common), saves `<name>-<epoch:06d>.safetensors` (and with --save_state `<name>-<epoch:06d>-state/`,
pruned to --save_last_n_epochs_state) every --save_every_n_epochs epochs but the last, then `<name>-state/`
and `<name>.safetensors`, each a LoRA for the --dit it read with musubi's key names, shapes and metadata
(_fake_lora.py). `--resume` restores the scheduler as accelerate does and restarts the counters at 0.
Each optimizer step's lr is appended to $FAKE_MUSUBI_LR_LOG as {"output_name", "lr"}.
With WORLD_SIZE=N (accelerate's data-parallel launch) it does what musubi's rank 0 does: ceil(batches / N)
steps per epoch, a schedule of max_train_steps x N steps (musubi's get_lr_scheduler) stepped N times per
optimizer step (accelerate's AcceleratedScheduler), and one random_states_<rank>.pkl per process in a state.
It first reads the dataset's cache files as musubi's prepare_for_training does (_fake_cache.py) and says how
many items it found; a cache file cut short fails it.
FAKE_MUSUBI_STOP_AFTER_EPOCH=[<output_name>:]<n> kills the process (SIGKILL, like a preemption) after epoch
n's saves; FAKE_MUSUBI_TORN_STATE=1 makes that epoch's state save stop halfway instead.
"""

import json
import os
import shutil
import signal
import zipfile
from pathlib import Path

if not __package__:  # run as a file, like the real scripts: make the package importable
    import _script_path  # noqa: F401
from musubi_tuner import _fake_cache, _fake_lora
from musubi_tuner._fake_common import Scheduler, add_options, lr_lambda, start, value


def wan_setup_parser(parser):
    return add_options(parser, "wan_train_network")


def write_zip(path: Path, data: dict) -> None:
    with zipfile.ZipFile(path, "w") as archive:  # torch.save's container format
        archive.writestr("data.pkl", json.dumps(data))


def write_safetensors(path: Path, text: str) -> None:
    header = json.dumps({"__metadata__": {"fake": text}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)


def save_state(folder: Path, scheduler: Scheduler, torn: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", "lora weights")
    write_zip(folder / "optimizer.bin", {"lr": scheduler.optimizer_lr})
    if torn:  # killed while writing scheduler.bin: cut short, and random_states_0.pkl never written
        write_zip(folder / "scheduler.bin", scheduler.state())
        data = (folder / "scheduler.bin").read_bytes()
        (folder / "scheduler.bin").write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    write_zip(folder / "scheduler.bin", scheduler.state())
    for rank in range(world_size()):  # accelerate: every process saves its own random state
        write_zip(folder / f"random_states_{rank}.pkl", {"step": scheduler.last_epoch})


def load_state(folder: Path, scheduler: Scheduler) -> None:
    with zipfile.ZipFile(folder / "scheduler.bin") as archive:
        scheduler.load(json.loads(archive.read("data.pkl")))


class steps_bar:
    """musubi's `tqdm(range(max_train_steps), smoothing=0, desc="steps")` with set_postfix(avr_loss=...), when
    tqdm is installed (the dev environment); otherwise nothing, as with a disabled bar."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = tqdm(range(total), smoothing=0, desc="steps", mininterval=0) if tqdm else None

    def step(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(avr_loss=loss)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def lora_args(args) -> dict:
    return {flag: value(args, flag) for flag in _fake_lora.FLAGS}


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def stop_after(name: str) -> int | None:
    spec = os.environ.get("FAKE_MUSUBI_STOP_AFTER_EPOCH", "")
    target, _, epoch = spec.rpartition(":")
    return int(epoch) if epoch and target in ("", name) else None


def main():
    args = start("wan_train_network")
    assert Path(value(args, "--dit")).is_file(), "fake musubi: --dit does not exist"
    print(f"fake musubi: {_fake_cache.training_items(value(args, '--dataset_config'))} cached items", flush=True)
    out, name = Path(value(args, "--output_dir")), value(args, "--output_name")
    out.mkdir(parents=True, exist_ok=True)
    epochs, every = int(value(args, "--max_train_epochs")), int(value(args, "--save_every_n_epochs") or 0)
    batches, processes = int(os.environ.get("FAKE_MUSUBI_STEPS_PER_EPOCH", "3")), world_size()
    per_epoch = -(-batches // processes)  # musubi: ceil(len(dataloader) / num_processes / accumulation)
    total, lr = epochs * per_epoch, float(value(args, "--learning_rate"))
    print(f"override steps. steps for {epochs} epochs is / 指定エポックまでのステップ数: {total}", flush=True)
    scheduler = Scheduler(lr_lambda(args, total * processes, lr), lr)
    if value(args, "--resume"):
        load_state(Path(value(args, "--resume")), scheduler)
    lr_log = os.environ.get("FAKE_MUSUBI_LR_LOG")
    keep = int(value(args, "--save_last_n_epochs_state") or 0)
    bar = steps_bar(total)
    for epoch in range(1, epochs + 1):
        print(f"\nepoch {epoch}/{epochs}", flush=True)  # musubi's accelerator.print
        for _ in range(per_epoch):  # optimizer.step() at the current lr, then lr_scheduler.step()
            if lr_log:
                with open(lr_log, "a") as handle:
                    handle.write(json.dumps({"output_name": name, "lr": scheduler.optimizer_lr}) + "\n")
            for _ in range(processes):
                scheduler.step()
            bar.step(0.05 + 0.2 / (1 + 500 * lr * scheduler.last_epoch))  # falls faster with a higher lr
        stop = stop_after(name) == epoch
        if every and epoch % every == 0 and epoch < epochs:
            _fake_lora.save(out / f"{name}-{epoch:06d}.safetensors", lora_args(args), epoch, scheduler.last_epoch)
            print(f"\nsaving checkpoint: {out / f'{name}-{epoch:06d}.safetensors'}", flush=True)
            if "--save_state" in args:
                save_state(out / f"{name}-{epoch:06d}-state", scheduler, stop and bool(os.environ.get(
                    "FAKE_MUSUBI_TORN_STATE")))
                if keep:
                    shutil.rmtree(out / f"{name}-{epoch - every * keep:06d}-state", ignore_errors=True)
        if stop:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    if "--save_state" in args:
        save_state(out / f"{name}-state", scheduler, False)
    _fake_lora.save(out / f"{name}.safetensors", lora_args(args), epochs, scheduler.last_epoch)


if __name__ == "__main__":
    main()
