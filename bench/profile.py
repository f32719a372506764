"""Sampling profiles of the bench's gunicorn workers with py-spy (``bench/trigger.py --profile DIR``).

py-spy attaches to each worker by pid for one measured run and writes collapsed stacks (``--format raw``:
one line per distinct stack, ``frame;frame;… count``), sampling on-CPU stacks only (idle waits on a socket
are left out), with ``--nonblocking`` so the workers are never paused. ``summarise`` turns those files into
the two tables the trigger-path notes quote (docs/architecture.md#trigger-path): the functions with the most
samples on top of the stack (self) and on the stack at all (inclusive), as a share of all samples.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def require_py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when the venv is not on PATH
    path = str(beside) if beside.exists() else shutil.which("py-spy")
    if path is None:
        raise SystemExit(
            "--profile needs py-spy (requirements-dev.txt: `.venv/bin/pip install -r requirements-dev.txt`)"
        )
    return path


def start(py_spy: str, pids: Sequence[int], *, seconds: int, out_dir: Path, label: str) -> list[subprocess.Popen]:
    """One ``py-spy record`` per worker, for ``seconds``; ``wait`` for them after the run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    processes = []
    for pid in pids:
        command = [
            py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250", "--format", "raw",
            "--function", "--nonblocking", "--output", str(out_dir / f"{label}-{pid}.txt"),
        ]  # fmt: skip
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return processes


def wait(processes: Iterable[subprocess.Popen], *, timeout: float) -> None:
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


PROJECT_PACKAGES = frozenset({"runs", "buffer", "mollifier_project", "drainer", "sweep", "telemetry", "bench"})


def _name(frame: str) -> tuple[str, bool]:
    """``func (runs/trigger.py:12)`` → (``runs/trigger.py:func``, is a project frame). py-spy names files
    relative to ``sys.path``, so a project file starts with one of the project's packages."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), False
    path = match["file"]
    return f"{path}:{match['func']}", path.split("/", 1)[0] in PROJECT_PACKAGES


def summarise(paths: Iterable[Path], *, top: int = 15) -> str:
    """Tables of the collapsed stacks in ``paths`` (all workers together), as shares of all samples: the
    functions on top of the stack (self), the project's own functions on the stack at all (inclusive), and
    the share of samples inside the redis client (its round trips) and inside the project's code."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    in_redis = in_project = total = 0
    for path in paths:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            raw = stack.split(";")
            frames = [_name(frame) for frame in raw]
            total += n
            own[frames[-1][0]] += n
            for name in {name for name, project in frames if project}:
                inclusive[name] += n
            in_redis += n if any("(redis/" in frame for frame in raw) else 0
            in_project += n if any(project for _, project in frames) else 0
    if not total:
        return "(no samples)"
    lines = [
        f"{total} samples; {100 * in_project / total:.1f} % in the project's code, "
        f"{100 * in_redis / total:.1f} % inside the redis client",
        f"{'self %':>7}  function",
    ]
    lines += [f"{100 * n / total:7.1f}  {name}" for name, n in own.most_common(top)]
    lines += ["", f"{'incl %':>7}  project function"]
    lines += [f"{100 * n / total:7.1f}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)
