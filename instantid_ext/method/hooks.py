"""What every UNet patch of the method shares: the hook handles it put on modules."""

from __future__ import annotations

import threading

import torch


class HookSet:
    """Hook handles, detached once and under a lock, however often or from whichever thread
    removal is asked for (a job's cleanup and an interrupted sampler can both ask)."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._lock = threading.Lock()

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def _detach(self) -> bool:
        """Remove every hook; True when there were any (the first removal)."""
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        return bool(handles)
