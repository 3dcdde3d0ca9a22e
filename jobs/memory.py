"""A process's peak resident memory since a chosen moment (Linux /proc): what a cell in a reused
Ray worker (jobs.cell) and each measurement of `python -m adapters.bench` report as their peak."""

from __future__ import annotations


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB: VmRSS (resident now), VmHWM (peak since the last reset)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak() -> None:
    """Set the kernel's peak mark VmHWM to the current resident set ("5" to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
