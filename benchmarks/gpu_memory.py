"""Peak GPU memory and step time of a musubi-tuner Wan LoRA training step, to calibrate launcher/core/memory.py.

Needs a CUDA GPU and musubi-tuner importable (the LoRA Gym image has both: `docker run --gpus all --entrypoint
python lora-gym-wan22:<v> benchmarks/gpu_memory.py`, or a venv with `pip install -e /path/to/musubi-tuner`).
Elsewhere it refuses with one `error:` line, exit 2. Nothing is downloaded: a DiT of the preset's real shapes
with random weights is written once to --workdir (28.6 GB for 14B, 2.8 GB for 1.3B) and loaded by musubi's own
`load_wan_model`, so fp8 and fp8_scaled go through the real code. Each configuration runs in a fresh process
(a clean CUDA allocator and block-swap setup): musubi's block swap and activation offload, its LoRA network,
bitsandbytes AdamW8bit, gradient checkpointing and SDPA, as the plan's argv asks for them. The table prints
measured peak (the device memory in use after the steps: torch's caching allocator keeps its peak, plus the
CUDA context), torch's peak allocated, the estimate and its error, and seconds per step.

    python benchmarks/gpu_memory.py --preset wan21-t2v-14b --sizes 832x480x1,960x544x45,1280x720x21 \\
        --swaps 0,20,39 --offload both --steps 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="wan21-t2v-14b", help="preset name or .toml (task, dtype, fp8, rank)")
    parser.add_argument("--expert", choices=["high", "low"], default="low", help="Wan 2.2: whose LoRA rank")
    parser.add_argument("--sizes", default="832x480x1,960x544x45,1280x720x21", help="WxHxFRAMES, comma separated")
    parser.add_argument("--swaps", default="0,20,39", help="blocks_to_swap values, comma separated")
    parser.add_argument("--offload", choices=["no", "yes", "both"], default="no",
                        help="--gradient_checkpointing_cpu_offload off, on, or each size both ways")
    parser.add_argument("--steps", type=int, default=4, help="training steps per configuration (first is warm-up)")
    parser.add_argument("--workdir", default="/tmp/lora-gym-gpu-memory", help="where the random DiT is written")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one configuration as JSON
    return parser.parse_args(argv)


def refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def environment_problem() -> str | None:
    """Why this machine cannot measure, or None. Torch and musubi are imported here, never at module level."""
    try:
        import torch
    except ImportError:
        return "benchmarks/gpu_memory.py needs torch with CUDA: run it in the LoRA Gym image on a GPU machine"
    if not torch.cuda.is_available():
        return ("benchmarks/gpu_memory.py needs a CUDA GPU (torch.cuda.is_available() is False): run it on a GPU "
                "machine, e.g. in the LoRA Gym image with --gpus all")
    try:
        import bitsandbytes  # noqa: F401
        import musubi_tuner.wan.modules.model  # noqa: F401
    except ImportError as exc:
        return f"benchmarks/gpu_memory.py needs musubi-tuner and bitsandbytes ({exc}): run it in the LoRA Gym image"
    return None


# --- what to measure -------------------------------------------------------------------------------------

def preset_facts(ref: str, expert: str) -> dict:
    from launcher import contract
    from launcher.core.presets import load_preset

    preset = load_preset(ref).preset
    rank = getattr(preset.experts, expert).network_dim if preset.experts else preset.train.network_dim
    wan22 = preset.family == "wan22"
    return {"task": preset.model.task, "dtype": preset.model.dtype, "fp8": preset.model.fp8_base is not False,
            "fp8_scaled": bool(preset.model.fp8_scaled or (wan22 and preset.model.fp8_base is None)), "rank": rank,
            "clip": contract.task_info(preset.model.task)["needs_clip_features"]}


def configurations(args: argparse.Namespace) -> list[dict]:
    offloads = {"no": [False], "yes": [True], "both": [False, True]}[args.offload]
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    return [{"size": size, "swap": int(swap), "offload": offload}
            for size in sizes for offload in offloads for swap in args.swaps.split(",")]


def estimate(facts: dict, config: dict) -> float:
    from launcher.core import memory
    from launcher.media.buckets import latent_tokens

    w, h, frames = config["size"]
    settings = memory.Settings(facts["fp8"], config["swap"], config["offload"])
    return memory.estimate(memory.Shape.of(facts["task"]), settings, facts["rank"], latent_tokens(w, h, frames)).gpu_gb


# --- the random DiT --------------------------------------------------------------------------------------

def random_dit(facts: dict, workdir: Path) -> Path:
    """A safetensors DiT of the task's real shapes and dtype, random weights, written once and reused."""
    path = workdir / f"random-{facts['task']}-{facts['dtype']}.safetensors"
    if path.is_file():
        return path
    import torch
    from accelerate import init_empty_weights
    from musubi_tuner.wan.configs import WAN_CONFIGS
    from musubi_tuner.wan.modules.model import WanModel
    from safetensors.torch import save_file

    c = WAN_CONFIGS[facts["task"]]
    with init_empty_weights():
        model = WanModel(model_type="i2v" if c.i2v else "t2v", model_version="2.2" if c.v2_2 else "2.1", dim=c.dim,
                         eps=c.eps, ffn_dim=c.ffn_dim, freq_dim=c.freq_dim, in_dim=c.in_dim, num_heads=c.num_heads,
                         num_layers=c.num_layers, out_dim=c.out_dim, text_len=c.text_len)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[facts["dtype"]]
    gen = torch.Generator(device="cuda").manual_seed(0)
    tensors = {name: (torch.randn(p.shape, generator=gen, device="cuda") * 0.02).to(dtype).cpu()
               for name, p in model.state_dict().items()}
    workdir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(tensors, str(partial))
    partial.rename(path)
    return path


# --- one configuration, in its own process ---------------------------------------------------------------

def load(facts: dict, dit: Path, swap: int):
    import torch
    from musubi_tuner.modules.custom_offloading_utils import BlockSwapConfig
    from musubi_tuner.wan.configs import WAN_CONFIGS
    from musubi_tuner.wan.modules.model import load_wan_model

    device = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[facts["dtype"]]
    # As musubi's trainer_base: fp8_scaled loads unscaled (None) and quantizes; fp8_base alone casts to e4m3.
    weight_dtype = (None if facts["fp8_scaled"] else torch.float8_e4m3fn) if facts["fp8"] else dtype
    model = load_wan_model(WAN_CONFIGS[facts["task"]], device, str(dit), "torch", False, "cpu" if swap else device,
                           weight_dtype, facts["fp8_scaled"])
    model.eval().requires_grad_(False)
    if swap:
        model.enable_block_swap(swap, BlockSwapConfig(device=device, supports_backward=True))
        model.move_to_device_except_swap_blocks(device)
        model.prepare_block_swap_before_forward()
    else:
        model.to(device)
    return model, dtype


def measure(facts: dict, config: dict, dit: Path, steps: int) -> dict:
    import bitsandbytes
    import torch
    from musubi_tuner.networks import lora_wan

    model, dtype = load(facts, dit, config["swap"])
    network = lora_wan.create_arch_network(1.0, facts["rank"], facts["rank"], None, [], model)
    network.apply_to(None, model, apply_text_encoder=False, apply_unet=True)
    network.to("cuda")  # fp32, as musubi trains LoRA weights under mixed precision
    network.prepare_grad_etc(model)  # as trainer_base does before the loop
    network.on_epoch_start(model)
    model.enable_gradient_checkpointing(config["offload"])
    model.train()
    optimizer = bitsandbytes.optim.AdamW8bit(network.parameters(), lr=1e-4, weight_decay=0.01)
    w, h, frames = config["size"]
    shape = (16, (frames - 1) // 4 + 1, h // 8, w // 8)  # VAE latents: 16 channels, 4x time, 8x space
    cond = model.patch_embedding.in_channels - 16  # I2V: mask + image latents beside the noisy ones
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        x = torch.randn(shape, device="cuda", dtype=dtype).requires_grad_(True)
        y = [torch.randn((cond, *shape[1:]), device="cuda", dtype=dtype)] if cond else None
        clip = torch.randn(1, 257, 1280, device="cuda", dtype=dtype) if facts["clip"] else None  # Wan 2.1 I2V
        context = [torch.randn(512, 4096, device="cuda", dtype=dtype)]
        with torch.autocast("cuda", dtype=dtype):
            pred = model([x], t=torch.tensor([500.0], device="cuda"), context=context, clip_fea=clip,
                         seq_len=shape[1] * shape[2] * shape[3] // 4, y=y)
        loss = torch.nn.functional.mse_loss(pred[0].float(), torch.randn_like(pred[0], dtype=torch.float32))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    free, total = torch.cuda.mem_get_info()
    return {"peak_reserved_gb": torch.cuda.max_memory_reserved() / 2 ** 30,
            "peak_allocated_gb": torch.cuda.max_memory_allocated() / 2 ** 30,
            "device_used_gb": (total - free) / 2 ** 30,  # includes the CUDA context, as the estimate does
            "seconds_per_step": sorted(times[1:])[len(times[1:]) // 2] if steps > 1 else times[0]}


def child(args: argparse.Namespace) -> int:
    job = json.loads(args.one)
    try:
        result = measure(job["facts"], job["config"], Path(job["dit"]), args.steps)
    except Exception as exc:  # the measurement: an OOM is a result, not a crash of the table
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# --- the table -------------------------------------------------------------------------------------------

def run_one(facts: dict, config: dict, dit: Path, steps: int) -> dict:
    job = json.dumps({"facts": facts, "config": config, "dit": str(dit)})
    done = subprocess.run([sys.executable, __file__, "--one", job, "--steps", str(steps)], capture_output=True,
                          text=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": f"exit {done.returncode}: {(done.stderr.strip().splitlines() or ['?'])[-1][:120]}"}
    return json.loads(line[len("RESULT "):])


def row(facts: dict, config: dict, result: dict) -> str:
    from launcher.media.buckets import latent_tokens

    w, h, frames = config["size"]
    est = estimate(facts, config)
    head = (f"| {w}x{h}x{frames} | {latent_tokens(w, h, frames):,} | {config['swap']} | "
            f"{'yes' if config['offload'] else 'no'} | {est:.1f} |")
    if "error" in result:
        return f"{head} {result['error']} | | | |"
    measured = result["device_used_gb"]  # torch's cache keeps its peak, plus the CUDA context, as estimated
    return (f"{head} {measured:.1f} | {result['peak_allocated_gb']:.1f} | {100 * (est - measured) / measured:+.0f}% "
            f"| {result['seconds_per_step']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.one:
        return child(args)
    problem = environment_problem()
    if problem:
        return refuse(problem)
    import torch

    facts = preset_facts(args.preset, args.expert)
    dit = random_dit(facts, Path(args.workdir))
    print(f"{args.preset}: {facts['task']} {facts['dtype']}, fp8 {facts['fp8']}, scaled {facts['fp8_scaled']}, "
          f"LoRA rank {facts['rank']}, on {torch.cuda.get_device_name()} ({args.steps} steps, median after the first)")
    print("| item | tokens | swap | offload | estimate GB | peak GB | allocated GB | estimate error | s/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config in configurations(args):
        print(row(facts, config, run_one(facts, config, dit, args.steps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
