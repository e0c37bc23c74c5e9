"""The "InstantID" AlwaysVisible script: the one toggle in txt2img and img2img."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from modules import scripts

from ..errors import InstantIDError
from ..job.lifecycle import is_copy_of_running_job
from . import host, run, services, xyz

logger = logging.getLogger(__name__)


def ui_env() -> Any:
    from .ui import UiEnv

    res = services.resources

    def refresh() -> None:
        res().inventory(refresh=True)

    return UiEnv(
        adapter_names=lambda: res().inventory().names("ip_adapter"),
        identitynet_names=lambda: res().inventory().names("identitynet"),
        identity_names=lambda: res().identities().names(),
        refresh=refresh,
        controlnet_status=services.controlnet_status,
        preview=services.preview,
        save_identity=services.save_identity,
        people_preview=services.people_preview,
    )


def _unexpected(err: Exception, when: str) -> InstantIDError:
    logger.exception("InstantID failed while %s", when)
    return InstantIDError(f"InstantID failed unexpectedly ({type(err).__name__}: {err}); see the console.")


def _job_step(p: Any, step: Callable[[run.Run], None], doing: str | None = None) -> None:
    """Runs ``step`` on the job of ``p``, if one runs. An InstantID error fails the job; so does any
    other error when ``doing`` names the step (for the console), which otherwise propagates."""
    job = run.run_of(p)
    if job is None:
        return
    try:
        step(job)
    except InstantIDError as err:
        job.fail(err)
    except Exception as err:
        if doing is None:
            raise
        job.fail(_unexpected(err, doing))


class InstantIDScript(scripts.Script):
    """Wires the core into a generation; the job it starts undoes itself (see :mod:`.run`)."""

    def title(self) -> str:
        return "InstantID"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        from .ui import build_ui

        result = build_ui(is_img2img, ui_env())
        self.infotext_fields = [*result.infotext_fields, *result.row_fields]
        self.paste_field_names = result.paste_field_names
        return result.components

    def before_process(self, p: Any, *args: Any) -> None:
        overrides = xyz.overrides_of(p)  # an X/Y/Z plot cell's InstantID axis values
        if (not args or args[0] is False) and not overrides:
            return  # off: nothing else runs, nothing is touched
        if is_copy_of_running_job(p):
            return  # another extension re-running the hooks on a copy: the job stays the original's
        try:
            parsed = xyz.job_args(args, overrides)
            if parsed is None:
                return
            host.check_supported()
            run.start(p, parsed, services.resources(), kind=services.run_kind())
        except InstantIDError as err:
            logger.error("%s", err)
            host.abort_job(p, err)
        except Exception as err:  # a bug must not let the job run half-configured
            host.abort_job(p, _unexpected(err, "preparing the generation"))

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        _job_step(p, lambda job: job.on_batch(p), "setting up the batch")

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """Forge Classic and reForge, before each sampling pass (AUTOMATIC1111 has no such hook)."""
        _job_step(p, lambda job: job.before_every_sampling(p), "patching the UNet for sampling")

    def before_hr(self, p: Any, *args: Any) -> None:
        _job_step(p, lambda job: job.enter_hires(p))

    def postprocess_image(self, p: Any, pp: Any, *args: Any) -> None:
        job = run.run_of(p)
        if job is None:
            return
        try:
            job.postprocess_image(p, pp, self)
        except InstantIDError as err:  # the image is kept as generated
            job.warn(str(err))
        except Exception as err:
            _unexpected(err, "post-processing an image")
            job.warn(
                "The face pass or likeness score failed unexpectedly (see the console); the image is kept."
            )

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        run.finish(p, processed)
