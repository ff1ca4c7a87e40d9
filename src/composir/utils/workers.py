"""Data-loading worker processes: as many as asked, but never more than the machine has, and never
outliving the process that started them."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def capped_workers(asked: int, what: str = "data-loading workers") -> int:
    """``asked`` lowered to the CPUs this process may use, with one line saying so."""
    cap = usable_cpus()
    if asked > cap:
        log.warning("%s: %d asked, lowered to %d (the CPUs this process may use)", what, asked, cap)
        return cap
    return max(0, asked)


def die_with_parent(_worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the kernel kills this worker when its parent dies (even by
    SIGKILL, which runs no clean-up in the parent). Linux only; elsewhere nothing happens."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def loader_workers(asked: int, what: str = "data-loading workers") -> dict[str, Any]:
    """DataLoader keyword arguments: the capped worker count, and workers that die with the parent."""
    workers = capped_workers(asked, what)
    return {"num_workers": workers, "worker_init_fn": die_with_parent if workers else None}
