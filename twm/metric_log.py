"""The run's local metric log (`metrics.jsonl` in the run directory): every metric point is appended here
first, and MLflow is fed from it (twm.tracking), so no tracking fault can lose a point.

One point per line, `{"key": ..., "value": ..., "step": ..., "ts": <ms>}`. A point's identity is
(key, step): per-update metrics use the update number as step, per-env-step metrics the env step, so
no key repeats a step within a run. The log is fsynced at every checkpoint, and the checkpoint records
its byte size; a resumed run cuts the log back to that size, so the steps it redoes are not recorded
twice. A kill mid-append leaves a torn last line, which readers skip (it is cut on resume).
Torch-free and MLflow-free.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Point:
    key: str
    value: float
    step: int
    ts: int  # ms since the epoch, when the point was logged

    @property
    def ident(self) -> tuple[str, int]:
        return self.key, self.step


class MetricLog:
    """Appends points to the log; one `write` per call so that lines stay whole unless the process dies."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._torn = False  # a write failed part-way: the next append starts on a fresh line

    def append(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        text = "".join(json.dumps({"key": k, "value": float(v), "step": int(step), "ts": ts}) + "\n"
                       for k, v in metrics.items())
        if self._torn:
            text = "\n" + text
        data = text.encode()
        self._torn = True
        while data:
            data = data[os.write(self._fd, data):]
        self._torn = False

    def sync(self) -> int:
        """Make everything appended so far durable; returns the log's size (what a checkpoint records)."""
        os.fsync(self._fd)
        return os.fstat(self._fd).st_size

    def truncate(self, size: int) -> None:
        """Cut the log back to `size` bytes (a checkpoint's position): later points are redone."""
        if os.fstat(self._fd).st_size > size:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_points(path: Path, offset: int = 0, end: int | None = None) -> tuple[list[Point], int, int]:
    """Whole lines of the log from byte `offset` (up to `end`): (points, offset after the last whole line,
    number of unreadable lines skipped). A torn last line is left for a later read."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read() if end is None else f.read(max(0, end - offset))
    except FileNotFoundError:
        return [], offset, 0
    whole = data[: data.rfind(b"\n") + 1]
    points, skipped = [], 0
    for line in whole.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            points.append(Point(str(item["key"]), float(item["value"]), int(item["step"]), int(item["ts"])))
        except (ValueError, KeyError, TypeError):
            skipped += 1
    return points, offset + len(whole), skipped
