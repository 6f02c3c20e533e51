"""Where a result came from: the commit, the library versions, the machine, its load and matmul rate.

Every study and benchmark result records `describe_run()` taken around its measurements, so a number
can always be traced to the code, the machine and how busy that machine was.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "numpy", "scipy")


# What `dirty` ignores: the results and the Markdown that studies and benchmarks write themselves.
OUTPUTS = (":(exclude)results", ":(exclude)*.md")


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """{"commit": the HEAD commit or None, "dirty": whether tracked files other than `OUTPUTS` differ from it}."""

    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *arguments], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", *OUTPUTS)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str | None]:
    """Python's version and each installed distribution's (None when it is not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else `platform.processor()`."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The platform, CPU model and core count, memory, and JAX's backend and devices."""
    import jax  # pylint: disable=import-outside-toplevel (a version or git query needs no JAX)

    devices = jax.devices()
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "backend": jax.default_backend(),
        "accelerator": f"{len(devices)} x {devices[0].device_kind}",
    }


def machine_load() -> dict[str, Any]:
    """The load averages and `uptime`'s line: who else was using the machine."""
    line = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    return {"load_average": [round(x, 2) for x in os.getloadavg()], "uptime": line}


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def conditions(matmul_size: int = 2048) -> dict[str, Any]:
    """The machine's state now: time, load and float32 matmul FLOP/s (taken before and after a run)."""
    from littlehelp.metrics import measure_matmul_flops  # pylint: disable=import-outside-toplevel

    return {"time": utc_now(), "load": machine_load(), "matmul_flops_per_second": measure_matmul_flops(matmul_size)}


def describe_run(
    command: str, before: dict[str, Any], after: dict[str, Any], git: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A result's provenance: git state (`git`, taken when the run started; default: now), date,
    versions, machine, the command, and the `conditions()` taken before and after it."""
    return {
        **(git or git_state()),
        "date": before["time"],
        "command": command,
        "versions": library_versions(),
        "machine": machine(),
        "before": before,
        "after": after,
    }
