"""One InstantID generation as an object that owns every change it makes to the host.

A job patches a few things while it runs: methods of its own ``p`` (``sample``, ``close``),
ControlNet's argument slot and model list, ControlNet's model loader, hooks on the UNet.
Each change is registered with :meth:`Job.own` together with its undo, and :meth:`Job.close`
undoes them in reverse order, once. ``close`` runs from the script's ``postprocess`` and,
because ``postprocess`` is skipped when a generation fails, from ``p.close()``, which the
WebUI calls after every generation (UI, API and scripts use ``with closing(p)``).

Nothing here reaches into another job: a generation started inside another one (a face pass,
ADetailer running this script) is a job of its own whose undo leaves the outer job intact.
The only process-wide record is the set of open jobs, used when the script is unloaded.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from ..args import InstantIDArgs
from ..errors import InstantIDError

logger = logging.getLogger(__name__)

JOB_ATTR = "_instantid_job"
#: Infotext key holding the job's warnings.
WARNING_KEY = "InstantID warning"

_OPEN: weakref.WeakSet[Job] = weakref.WeakSet()
"""Jobs not closed yet; :func:`close_all` closes them when the script is unloaded."""


class Job:
    """What one generation set up, and how to put the host back as it was."""

    def __init__(self, p: Any, args: InstantIDArgs) -> None:
        self.args = args
        self.failure: InstantIDError | None = None
        """Set when a hook after ``before_process`` fails; sampling then stops with it."""
        self.notes: list[str] = []
        """Warnings shown in the console, under the gallery and in the API's ``info``."""
        self.closed = False
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._p = _ref(p)
        setattr(p, JOB_ATTR, self)
        _OPEN.add(self)

    @property
    def p(self) -> Any:
        return self._p()

    # -- owned changes --------------------------------------------------------------------
    def own(self, what: str, undo: Callable[[], None]) -> None:
        """Record a change this job made; ``undo`` puts it back when the job closes."""
        if self.closed:
            undo()
            return
        self._undo.append((what, undo))

    def replace_method(self, obj: Any, name: str, replacement: Callable[..., Any]) -> Callable[..., Any]:
        """Shadow ``obj.name`` on the instance with ``replacement``; returns the previous callable.

        The undo removes the shadow only while it is still ours, so a later patch by someone
        else (ControlNet wraps ``p.sample`` too) is never torn down by us.
        """
        previous = getattr(obj, name)
        had_own = name in vars(obj)
        own_value = vars(obj).get(name)
        setattr(obj, name, replacement)

        def undo() -> None:
            if vars(obj).get(name) is not replacement:
                return
            if had_own:
                setattr(obj, name, own_value)
            else:
                delattr(obj, name)

        self.own(f"{type(obj).__name__}.{name}", undo)
        return previous

    def close(self) -> None:
        """Undo every change, newest first; safe to call more than once, never raises."""
        if self.closed:
            return
        self.closed = True
        _OPEN.discard(self)
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception:  # one failed undo must not keep the others from running
                logger.exception("InstantID could not undo its change to %s", what)

    # -- messages -----------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        """Tell the user something degraded: console, the text under the gallery, the API info."""
        if message in self.notes:
            return
        self.notes.append(message)
        logger.warning("%s", message)
        p = self.p
        comment = getattr(p, "comment", None)
        if callable(comment):
            comment(f"InstantID: {message}")
        params = getattr(p, "extra_generation_params", None)
        if isinstance(params, dict):  # the API's info carries infotext, not the comments
            params[WARNING_KEY] = " ".join(self.notes)

    def fail(self, error: InstantIDError) -> None:
        """Make sampling stop with ``error`` (hooks other than ``before_process`` cannot abort)."""
        logger.error("%s", error)
        if self.failure is None:
            self.failure = error


def _open_job_on(p: Any) -> Job | None:
    """The open job whose attribute ``p`` carries: its own, or that of the ``p`` it was copied from."""
    job = getattr(p, JOB_ATTR, None)
    return job if isinstance(job, Job) and not job.closed else None


def job_of(p: Any) -> Job | None:
    """The open job of this very ``p``; None for a copy of it (``copy(p)`` keeps the attribute)."""
    job = _open_job_on(p)
    return job if job is not None and job.p is p else None


def is_copy_of_running_job(p: Any) -> bool:
    """Whether ``p`` is a copy of a generation whose job is open.

    ADetailer calls every script's ``postprocess`` on ``copy(p)`` before its own passes (so that
    ControlNet unhooks the UNet) and ``before_process`` and ``process`` on another copy after
    them (so that ControlNet hooks it again for the next batch). Those calls belong to the
    original generation: they must neither close its job nor open a second one.
    """
    job = _open_job_on(p)
    return job is not None and job.p is not None and job.p is not p


def close_all() -> int:
    """Close every open job (the script is being unloaded); returns how many."""
    jobs = list(_OPEN)
    for job in jobs:
        job.close()
    return len(jobs)


def _ref(obj: Any) -> Callable[[], Any]:
    """A weak reference when ``obj`` allows one (the WebUI's ``p`` does), else a strong one."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj
