"""An out-of-memory that explains itself: spot CUDA OOM in a training step's output, and say what to change.

musubi-tuner prints no message of its own for it (nothing in src/ at the pinned commit); what reaches the log
is torch's: `torch.OutOfMemoryError: CUDA out of memory. Tried to allocate ...` (torch >= 2.5; earlier
`torch.cuda.OutOfMemoryError`), or from a CUDA library call `CUDA error: out of memory` and cuBLAS's
`CUBLAS_STATUS_ALLOC_FAILED`. The fix was worked out when planning (launcher/core/fit.py: the next tier's
`--gpu-memory`, more block swap, or which dataset entry to shrink) and travels in the plan.
"""

from __future__ import annotations

import re

OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED")


def step_name(expert: str | None) -> str:
    return f"train-{expert}" if expert else "train"


def hint_for(plan, step: str) -> str | None:
    """The plan's advice for `step` running out of GPU memory, if it is a training step."""
    return next((c.oom_hint for c in plan.memory if step_name(c.expert) == step), None)


class Watch:
    """A step's output stream, passed through, that remembers whether CUDA ran out of memory."""

    def __init__(self, out):
        self.out, self.seen = out, False

    def write(self, text: str) -> int:
        self.seen = self.seen or bool(OOM.search(text))
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()
