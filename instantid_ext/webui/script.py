"""The "InstantID" AlwaysVisible script: the one toggle in txt2img and img2img."""

from __future__ import annotations

import logging
from typing import Any

from modules import scripts

from ..args import InstantIDArgs, is_enabled
from ..errors import InstantIDError
from . import host, run, services

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
    )


def _fail(p: Any, error: InstantIDError) -> None:
    logger.error("%s", error)
    run.finish(p)
    host.abort_job(p, error)


class InstantIDScript(scripts.Script):
    """Wires the core into a generation: prepare in ``before_process``, undo in ``postprocess``."""

    def title(self) -> str:
        return "InstantID"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        from .ui import build_ui

        result = build_ui(is_img2img, ui_env())
        self.infotext_fields = result.infotext_fields
        self.paste_field_names = result.paste_field_names
        return result.components

    def before_process(self, p: Any, *args: Any) -> None:
        run.cleanup_stale()
        if not args or args[0] is False or not is_enabled(args):
            return  # off: nothing else runs, nothing is touched
        try:
            parsed = InstantIDArgs.parse(args)
            run.start(p, parsed, services.resources())
        except InstantIDError as err:
            _fail(p, err)
        except Exception as err:  # a bug must not let the job run half-configured
            logger.exception("InstantID failed while preparing the generation")
            _fail(
                p,
                InstantIDError(
                    f"InstantID failed unexpectedly ({type(err).__name__}: {err}); see the console."
                ),
            )

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        state = run.state_of(p)
        if state is None or state.bridge is None or state.unit is None:
            return
        try:
            state.bridge.apply_face_context(
                p, state.unit, state.tokens.cond, state.tokens.uncond, region_mask=state.mask
            )
        except InstantIDError as err:
            logger.error("%s", err)
            run.fail_sampling(state, err)

    def before_hr(self, p: Any, *args: Any) -> None:
        state = run.state_of(p)
        if state is None or state.bridge is None:
            return
        try:
            state.bridge.mark_hires_conds(p)
        except InstantIDError as err:
            logger.error("%s", err)
            run.fail_sampling(state, err)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        run.finish(p)
