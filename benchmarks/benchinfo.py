"""What machine and code a benchmark ran on, for its JSON and benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path


def describe(**versions: str) -> dict[str, object]:
    """CPU model, cores, Python, OS, git commit and date, plus the given tool ``versions``."""
    cpu = "unknown"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        **versions,
        "os": platform.platform(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
    }
