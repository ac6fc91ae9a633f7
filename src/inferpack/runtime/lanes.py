"""The server's background lanes: the threads that load models and prepare fast runtimes (runtime/tier.py)
beside the inference threads, niced so that inference wins the cores while they run."""

from __future__ import annotations

import contextlib
import os
import threading

import torch

BACKGROUND_NICE = 10  # work off every request's path (spare shells, fast-runtime upgrades)


def load_lane_thread(nice: int) -> None:
    """Set up a load thread: one intra-op torch thread (a load never takes every core) and, on Linux, a
    lower scheduling priority for this thread alone, so inference threads win the cores while it runs."""
    torch.set_num_threads(1)
    if nice > 0 and hasattr(os, "setpriority"):
        # where not permitted, loads run at the inference threads' priority
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
