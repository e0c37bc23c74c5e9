"""One generation with InstantID: prepare, wire into the host, and undo everything after.

The face tokens are applied only while ``p.sample`` runs (both passes of hires fix
included): a wrapper installs the attention hooks, and its ``finally`` removes them, so
an error or an interrupt inside sampling leaves the UNet untouched. ControlNet changes
are undone in ``postprocess`` and, in case that never ran, at the start of the next job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..args import InstantIDArgs
from ..errors import InstantIDError
from ..ip_adapter import IPAdapter
from ..ip_attention import IPAttentionPatch, PrecomputedKV, RowRouter, remove_all_patches
from ..models import ModelFile, short_hash
from ..pipeline import FaceConditioning, FaceTokens, build_face_conditioning
from ..resources import Resources
from . import host

logger = logging.getLogger(__name__)

STATE_ATTR = "_instantid_run"


@dataclass
class RunState:
    """Everything one job set up; stored as one attribute on ``p``."""

    args: InstantIDArgs
    conditioning: FaceConditioning
    tokens: FaceTokens
    adapter: IPAdapter
    adapter_file: ModelFile
    identitynet_file: ModelFile | None = None
    bridge: Any = None  # ControlNetBridge when IdentityNet runs
    unit: Any = None  # the injected ControlNet unit handle
    router: RowRouter = field(default_factory=RowRouter)
    mask: torch.Tensor | None = None
    patch: IPAttentionPatch | None = None
    precomputed: PrecomputedKV = field(default_factory=dict)
    """Face keys/values per layer, computed in the first batch and reused by the next ones."""
    failure: Exception | None = None
    """Set when a later hook fails; sampling then stops with this message (hooks cannot abort)."""


_ACTIVE: RunState | None = None
"""The run whose sampling is in progress (read by the CFG denoiser callback)."""
_LAST: RunState | None = None
"""The last run prepared; cleaned up by the next job if its postprocess never ran."""


def active_run() -> RunState | None:
    return _ACTIVE


def cleanup_stale() -> None:
    """Undo whatever an earlier job left (its postprocess is skipped when it failed)."""
    global _ACTIVE, _LAST
    _ACTIVE = None
    removed = remove_all_patches()
    if removed:
        logger.warning("Removed %d InstantID attention patch(es) left by an earlier job", removed)
    last, _LAST = _LAST, None
    if last is not None and last.bridge is not None:
        try:
            last.bridge.cleanup(None)
        except InstantIDError as err:
            logger.warning("%s", err)


def _controlnet_bridge() -> Any:
    from .controlnet import ControlNetBridge

    return ControlNetBridge.detect()


def prepare(p: Any, args: InstantIDArgs, resources: Resources) -> RunState:
    """Analyse the face, load the adapter, set up IdentityNet; raises InstantIDError on bad input."""
    started = time.perf_counter()
    host.check_sdxl_base(p.sd_model)
    conditioning = build_face_conditioning(args, resources.analyzer, resources.identities())
    adapter_file, adapter = resources.adapter(args.ip_adapter_model)
    tokens = FaceTokens.from_embedding(adapter, conditioning.embedding)
    state = RunState(args, conditioning, tokens, adapter, adapter_file)
    size = (int(p.width), int(p.height))
    if args.face_region_only:
        mask = conditioning.region_mask(size, args.resize_mode)
        state.mask = None if mask is None else torch.from_numpy(mask)
    if args.control_weight > 0:
        bridge = _controlnet_bridge()
        state.identitynet_file = resources.identitynet(args.identitynet_model)
        links = resources.locations.model_dirs[0] / ".controlnet-links"
        key = bridge.identitynet_model_key(state.identitynet_file.path, cache_dir=links)
        hint = conditioning.hint_image(size, args.resize_mode)
        state.bridge = bridge
        state.unit = bridge.inject_unit(
            p, hint, args.control_weight, args.control_start, args.control_end, key
        )
    p.extra_generation_params.update(args.to_infotext(extra=_infotext_extra(state)))
    logger.info(
        "InstantID ready in %.2f s: %s, %s",
        time.perf_counter() - started,
        conditioning.source,
        args.summary(),
    )
    return state


def _infotext_extra(state: RunState) -> dict[str, str]:
    extra = {
        "InstantID adapter": state.adapter_file.name,
        "InstantID adapter hash": short_hash(state.adapter_file.path),
        "InstantID source": state.conditioning.source,
    }
    if state.identitynet_file is not None:
        extra["InstantID IdentityNet"] = state.identitynet_file.name
        extra["InstantID IdentityNet hash"] = short_hash(state.identitynet_file.path)
    return extra


def wrap_sampling(p: Any, state: RunState) -> None:
    """Apply the face tokens for exactly the duration of each ``p.sample`` call."""
    original = p.sample

    def sample_with_instantid(*args: Any, **kwargs: Any) -> Any:
        global _ACTIVE
        unet = host.unet_of(p.sd_model)
        a = state.args
        with IPAttentionPatch(
            unet,
            state.adapter,
            state.tokens.cond,
            state.tokens.uncond,
            scale=a.id_weight,
            start=a.id_start,
            end=a.id_end,
            mask=state.mask,
            router=state.router,
            precomputed=state.precomputed,
        ) as patch:
            state.patch = patch
            _ACTIVE = state
            try:
                if state.failure is not None:
                    raise state.failure
                result = original(*args, **kwargs)
                if state.failure is not None:
                    raise state.failure
                return result
            finally:
                _ACTIVE = None
                state.patch = None

    p.sample = sample_with_instantid


def start(p: Any, args: InstantIDArgs, resources: Resources) -> RunState:
    global _LAST
    state = prepare(p, args, resources)
    setattr(p, STATE_ATTR, state)
    _LAST = state
    wrap_sampling(p, state)
    return state


def fail_sampling(state: RunState, error: InstantIDError) -> None:
    """Make the job fail with ``error`` rather than run with a half-wired IdentityNet."""
    state.failure = host.as_http_error(error)


def state_of(p: Any) -> RunState | None:
    return getattr(p, STATE_ATTR, None)


def finish(p: Any) -> None:
    """Undo the job's changes to ControlNet and the UNet; safe to call more than once."""
    global _ACTIVE, _LAST
    state = state_of(p)
    _ACTIVE = None
    if state is None:
        return
    if state.patch is not None:
        state.patch.remove()
        state.patch = None
    state.precomputed.clear()
    if state.bridge is not None:
        try:
            if state.unit is not None:
                state.unit.restore(p)
            state.bridge.cleanup(p)
        except InstantIDError as err:
            logger.warning("%s", err)
    if _LAST is state:
        _LAST = None


def on_cfg_denoiser(params: Any) -> None:
    """Tell the router this denoiser call's row layout and the sampling progress."""
    state = _ACTIVE
    if state is None:
        return
    cond = params.text_cond
    crossattn = cond["crossattn"] if isinstance(cond, dict) else cond
    total = max(int(params.total_sampling_steps), 1)
    state.router.begin_step(
        n_cond=int(crossattn.shape[0]), n_total=int(params.x.shape[0]), progress=params.sampling_step / total
    )
