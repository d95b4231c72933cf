"""Small helpers shared by the suite's end-to-end tests (not a test module)."""

from __future__ import annotations

import time


def sets(items: list[str]) -> list[str]:
    """`--set` arguments for config overrides."""
    return [arg for item in items for arg in ("--set", item)]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.2):
    """Poll until `predicate()` is truthy and return its value; fail with `what` after `timeout_s`."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
