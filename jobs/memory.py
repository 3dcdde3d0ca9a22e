"""A process's peak memory since a chosen moment: the accelerator's on GPU; on CPU the peak
resident set (Linux /proc), what a cell in a reused Ray worker (jobs.cell) and each measurement of
`python -m adapters.bench` report as their peak."""

from __future__ import annotations

import resource


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB: VmRSS (resident now), VmHWM (peak since the last reset)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak() -> None:
    """Set the kernel's peak mark VmHWM to the current resident set ("5" to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mb() -> float:
    """Peak memory in MiB since the last reset: on GPU what torch allocated on this process's
    device (weights, activations, gradients, optimizer states, DeepSpeed's buffers; not the CUDA
    context or the allocator's cached free blocks); on CPU the peak resident set (imports and
    model included)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        return status_kb("VmHWM") / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
