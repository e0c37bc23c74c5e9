"""What a job that failed leaves in ControlNet and in the WebUI's prompt caches, undone."""

from __future__ import annotations

import logging
import sys
from typing import Any

from .access import MODULE_NAMES

logger = logging.getLogger(__name__)


class _NoOutput:
    """What ControlNet's ``postprocess`` reads of ``processed`` when there is no output."""

    def __init__(self) -> None:
        self.images: list[Any] = []
        self.extra_generation_params: dict[str, Any] = {}


def finish_failed_job(p: Any) -> None:
    """Do for ``p``'s ControlNet what its ``postprocess`` would have done, had the job not failed.

    ControlNet hooks the (shared) UNet in its ``process`` and undoes that only in its
    ``postprocess``, which the WebUI skips when a generation raises, or at the next ``process``
    of the *same* tab. A job stopped after ControlNet's ``process`` (our refusal at batch start
    or sampling, or any error) would leave its network on the UNet: the other tab's next job
    then samples through it (stale units, a hint of the wrong size), and a later hook stacks on
    it so that unhooking leaves a network without parameters behind. Its marked prompts would
    stay in the WebUI's prompt caches. Called when such a job closes; a no-op without ControlNet.
    """
    forget_marked_prompts(p)
    ec = sys.modules.get(MODULE_NAMES["external_code"])
    find = getattr(ec, "find_cn_script", None)
    script = find(getattr(p, "scripts", None)) if callable(find) else None
    if script is None or getattr(script, "latest_network", None) is None:
        return
    args = tuple(getattr(p, "script_args", None) or ())[script.args_from : script.args_to]
    try:
        script.postprocess(p, _NoOutput(), *args)
    except Exception:  # never mask the job's own error
        logger.exception("Could not undo ControlNet's hooks after the failed generation")
        network = getattr(script, "latest_network", None)
        if network is not None:
            network.restore()
            script.latest_network = None
    else:
        logger.info("Undid ControlNet's hooks of the failed generation")


# -- helpers ----------------------------------------------------------------------------------
PROMPT_CACHES = ("cached_c", "cached_uc")


HIRES_PROMPT_CACHES = ("cached_hr_c", "cached_hr_uc")


def forget_marked_prompts(p: Any, names: tuple[str, ...] = PROMPT_CACHES + HIRES_PROMPT_CACHES) -> None:
    """Empty the WebUI's class-level prompt caches (``StableDiffusionProcessing.cached_c`` …).

    ControlNet marks the cached prompts in place when sampling starts and empties the caches
    on the UNet's first call. A job stopped in between (by InstantID, when a batch turned out
    unusable) would leave marked prompts that the next job with the same prompt reuses: a
    plain generation would no longer be bit-identical.
    """
    for cls in type(p).__mro__:
        for name in names:
            if name in vars(cls):
                setattr(cls, name, [None, None])
