"""What every benchmark prints first and how it keeps its results: one small shared helper.

A results file starts with the exact command and the machine (CPU model and count, memory,
torch and Python versions, torch's thread count, the load average, since these machines are
shared), then holds every line the benchmark printed, so that a committed result can be read,
and rerun, without the script's source.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. ``1.1 1.5 1.4``."""
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def machine_lines() -> list[str]:
    """Two lines describing this machine and how busy it is."""
    import psutil
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")), "") if cpuinfo.exists() else platform.processor()
    threads = (f"{torch.get_num_threads()} torch threads "
               f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    return [f"machine: {os.cpu_count()} CPUs ({model}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"torch {torch.__version__}, python {platform.python_version()}, {platform.system()}, {threads}",
            f"load average at start: {load_average()} (other work shares this machine)"]


class Report:
    """Lines printed as they come and written to ``results/<name>.txt`` at the end.

    Args:
        name: the results file's stem (``bench_model`` or ``bench_model_quick``).
        out: another results path, if the user gave one.
    """

    def __init__(self, name: str, out: Path | None = None) -> None:
        self.path = out or RESULTS_DIR / f"{name}.txt"
        self.lines: list[str] = []
        self.started = time.perf_counter()
        threads_env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
        self.say(f"$ {threads_env}{' '.join([Path(sys.executable).name, *sys.argv])}")
        for line in machine_lines():
            self.say(line)

    def say(self, line: str = "") -> None:
        """Print a line now and keep it for the results file."""
        print(line, flush=True)
        self.lines.append(line)

    def progress(self, what: str) -> None:
        """Where the time goes: printed with the seconds since the start, not kept in the results."""
        print(f"  [{self.elapsed():5.1f} s] {what}", flush=True)

    def elapsed(self) -> float:
        """Seconds since the report was started."""
        return time.perf_counter() - self.started

    def write(self) -> Path:
        """Write every line said so far; returns the path."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")
        print(f"wrote {self.path}")
        return self.path
