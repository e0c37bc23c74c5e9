"""One generation with InstantID, as a :class:`~instantid_ext.job.lifecycle.Job` that undoes itself.

The work is split by when the host's state is final:

- ``before_process`` (:func:`start`): the arguments, the reference face(s), the adapter and
  face tokens, and our ControlNet unit (ControlNet reads its units in its ``process``). Bad
  input stops the job here, before anything runs.
- ``process_batch`` (:meth:`Run.on_batch`): ``p.init`` has fixed the sampled geometry (img2img
  resize, the "Only masked" crop, the hires target), so the keypoint hint and the face mask
  are drawn in those coordinates and handed to ControlNet.
- ``p.sample`` (:meth:`Run.sampling`): the checkpoint is final (the WebUI loads the job's
  checkpoint after ``before_process``), so the SDXL check runs here; the face tokens are
  hooked into the UNet for exactly the duration of the call, both hires passes included,
  and removed on success, error and interrupt.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..args import INFOTEXT_PREFIX, InstantIDArgs
from ..errors import InstantIDError, InvalidInputError, NoFaceError
from ..job.conditioning import (
    ORIGIN_TEXT,
    FaceConditioning,
    FacePose,
    FaceTokens,
    PlacedPose,
    black_hint,
    build_face_conditioning,
    pose_from_image,
    preset_pose,
)
from ..job.lifecycle import Job
from ..job.resources import Resources
from ..method.attention import IPAttentionPatch, MultiIPAttentionPatch, PrecomputedKV, RowRouter
from ..method.ip_adapter import IPAdapter
from ..method.pose_presets import PoseEdit
from ..models.discovery import ModelFile, short_hash
from . import face_pass, frames, host, scoring
from .people import People

logger = logging.getLogger(__name__)


class Run(Job):
    """What one InstantID generation prepared, on top of the :class:`Job` life cycle."""

    def __init__(self, p: Any, args: InstantIDArgs, resources: Resources) -> None:
        super().__init__(p, args)
        self.resources = resources
        self.conditioning: FaceConditioning | None = None
        self.tokens: FaceTokens | None = None
        self.adapter: IPAdapter | None = None
        self.adapter_file: ModelFile | None = None
        self.identitynet_file: ModelFile | None = None
        self.bridge: Any = None  # ControlNetBridge when IdentityNet runs
        self.unit: Any = None  # its InjectedUnit
        self.router = RowRouter()
        self.precomputed: PrecomputedKV = {}
        """Face keys/values per layer, computed in the first UNet call and reused by the next ones."""
        self.placed: PlacedPose | None = None
        self.hr_placed: PlacedPose | None = None
        self.hint: np.ndarray | None = None
        self.masks: dict[str, torch.Tensor | None] = {"first": None, "hires": None}
        self.early_canvas: tuple[int, int] | None = None
        """The canvas the layout was made for in ``before_process`` (:meth:`place_early`)."""
        self.pass_name = "first"
        self.patch: IPAttentionPatch | None = None
        self.noise_seed: int | None = None
        self.people: People | None = None
        """Several people (``args.people``), else None."""
        self.regional: Any = None
        """IdentityNet's region-bound attention for several people, while sampling."""
        self.likeness_reference: Any = None
        self.scores: list[tuple[int, Any]] = []
        """(image index, LikenessResult) for each scored output."""
        self.own("the face keys/values", self.precomputed.clear)

    def close(self) -> None:
        """Also remove the attention hooks of a sampling call still running (script unload)."""
        patch = self.patch
        if patch is not None:
            patch.remove()
        super().close()

    @property
    def pose(self) -> FacePose | None:
        return None if self.conditioning is None else self.conditioning.pose

    # -- process_batch: the geometry is final ----------------------------------------------
    def on_batch(self, p: Any) -> None:
        """Draw the hint and the face mask where the sampler works, and give them to ControlNet."""
        # The WebUI has loaded this batch's checkpoint (override settings included) by now; an
        # SD1.5 model also makes ControlNet drop its units, and this sentence says why.
        host.check_sdxl_base(p.sd_model)
        if self.early_canvas is not None and self.early_canvas != frames.canvas_size(p):
            self._forget_layout()  # another script resized the job after before_process
        if self.people is not None:
            self._on_batch_people(p)
            return
        if self.placed is None and self.hint is None:
            self._place(p)
        if self.args.noise > 0:
            self._noise_tokens(p)
        if self.bridge is None or self.unit is None:
            return
        assert self.tokens is not None
        self.bridge.apply_face_context(
            p,
            self.unit,
            self.tokens.cond,
            self.tokens.uncond,
            hint=self.hint,
            hr_hint=None if self.hr_placed is None else self.hr_placed.hint(),
            region_mask=self._mask_array("first"),
        )

    def place_early(self, p: Any) -> None:
        """Lay the face(s) out in ``before_process`` where the canvas is already final, so that a
        layout that cannot work (regions that overlap, too few faces for ``auto``, the face off
        the canvas with "Face region only") is refused before ControlNet sets up its units."""
        if not frames.canvas_is_final(p):
            return
        self.early_canvas = frames.canvas_size(p)
        if self.people is not None:
            self.people.place(p)
            self.hint = self.people.passes["first"].hint
        else:
            self._place(p)
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def _forget_layout(self) -> None:
        self.early_canvas = self.placed = self.hr_placed = self.hint = None
        self.masks = {"first": None, "hires": None}
        if self.people is not None:
            self.people.passes.clear()

    def _on_batch_people(self, p: Any) -> None:
        people = self.people
        assert people is not None
        if not people.passes:
            people.place(p)
            self.hint = people.passes["first"].hint
        if self.args.noise > 0:
            self._noise_tokens(p)
        if self.bridge is None or self.unit is None:
            return
        cond, uncond = people.context_tokens()
        hires = people.passes.get("hires")
        self.bridge.apply_face_context(
            p,
            self.unit,
            cond,
            uncond,
            hint=people.passes["first"].hint,
            hr_hint=None if hires is None else hires.hint,
            region_mask=people.passes["first"].strength_map(people.strengths),
        )

    def _place(self, p: Any) -> None:
        canvas = frames.canvas_size(p)
        placed = self._placed_on(p, canvas)
        if placed is None:
            self.hint = black_hint(canvas)
            return
        self.placed = placed.edited(self.edit)
        self.hint = self.placed.hint()
        hires = frames.hires_frame(p)
        if hires is not None:
            self.hr_placed = self.placed.then(hires)
        self._check_placement()
        if self.args.face_region_only:
            self.masks["first"] = _as_tensor(self.placed.region_mask())
            if self.hr_placed is not None:
                self.masks["hires"] = _as_tensor(self.hr_placed.region_mask())

    def _placed_on(self, p: Any, canvas: tuple[int, int]) -> PlacedPose | None:
        """The pose on the first pass's canvas, before the user's edits."""
        if self.args.pose_source == "preset":
            return preset_pose(self.args.pose_preset, canvas)
        pose = self.pose
        if pose is None:
            return None
        if pose.origin == "init_image":
            return pose.place(frames.init_frame(p, pose.size))
        return pose.place(frames.layout_frame(p, pose.size, self.args.resize_mode))

    @property
    def edit(self) -> PoseEdit:
        a = self.args
        return PoseEdit(a.pose_mirror, a.pose_rotate, a.pose_scale, a.pose_offset_x, a.pose_offset_y)

    def _check_placement(self) -> None:
        assert self.placed is not None
        for placed in (self.placed, self.hr_placed):
            if placed is None:
                continue
            problem = placed.problem()
            if problem is None:
                continue
            if self.args.face_region_only and placed.box_visible <= 0.0:
                msg = (
                    f"'Face region only' is on, but the face box from {ORIGIN_TEXT[placed.origin]} lies "
                    f"entirely outside the {placed.size[0]}×{placed.size[1]} canvas, so InstantID would "
                    "change nothing. Use an output size closer to the photo's aspect ratio, the resize "
                    "mode 'Resize and Fill', a pose image, or turn 'Face region only' off."
                )
                self.fail(InvalidInputError(msg))
                return
            self.warn(problem)

    def _noise_tokens(self, p: Any) -> None:
        """Uncond tokens from seeded noise (the batch's first seed), as the noise option asks."""
        seed = _batch_seed(p)
        if seed == self.noise_seed:
            return
        adapter, noise = self.adapter, self.args.noise
        assert adapter is not None and self.conditioning is not None
        if self.people is not None:
            self.people.tokens = [
                FaceTokens.from_embedding(adapter, c.embedding, noise=noise, seed=seed)
                for c in self.people.conditionings
            ]
        else:
            embedding = self.conditioning.embedding
            self.tokens = FaceTokens.from_embedding(adapter, embedding, noise=noise, seed=seed)
        self.noise_seed = seed
        self.precomputed.clear()  # the uncond keys/values changed

    def _mask_array(self, name: str) -> np.ndarray | None:
        mask = self.masks.get(name)
        return None if mask is None else mask.numpy()

    def mask_tensor(self) -> torch.Tensor | None:
        """The face mask of the pass being sampled, ``(1, 1, H, W)`` (ControlNet's residual mask form)."""
        mask = self.masks.get(self.pass_name)
        return None if mask is None else mask[None, None]

    def enter_hires(self, p: Any) -> None:
        """``before_hr``: mark the hires prompts for ControlNet; switch the face mask to the hires canvas."""
        self.pass_name = "hires"
        if self.bridge is not None:
            self.bridge.mark_hires_conds(p)
            if self.unit is not None:
                self.bridge.enter_hires(self.unit)
        if self.people is not None:
            self._people_hires()
            return
        if not self.args.face_region_only:
            return
        mask = self.masks.get("hires")
        if self.patch is not None:
            self.patch.set_masks([mask])
        if self.unit is not None:
            self.bridge.set_region_mask(self.unit, None if mask is None else mask.numpy())

    def _people_hires(self) -> None:
        people = self.people
        assert people is not None
        hires = people.passes.get("hires")
        if hires is None:
            return
        if self.patch is not None:
            self.patch.set_masks(people.masks("hires"))
        if self.unit is not None:
            self.bridge.set_region_mask(self.unit, hires.strength_map(people.strengths))
        if self.regional is not None:
            self._remove_regional()
            self.regional = self._regional_identitynet("hires")

    def _remove_regional(self) -> None:
        if self.regional is not None:
            self.regional.remove()
            self.regional = None

    def _regional_identitynet(self, name: str) -> Any:
        """IdentityNet's attention bound to each person's region (and, on ControlNet 1.1.444-1.1.445,
        which has no per-unit mask, the strengths as a residual map)."""
        from ..method.identitynet_regions import RegionalIdentityNet

        people = self.people
        assert people is not None and self.unit is not None and self.unit.param is not None
        param = self.unit.param
        strengths = None if hasattr(param, "effective_region_mask") else people.strengths
        return RegionalIdentityNet(param.control_model, people.masks(name), strengths)

    # -- p.sample: the checkpoint is final ---------------------------------------------------
    @contextlib.contextmanager
    def sampling(self, p: Any) -> Iterator[None]:
        """Face tokens in the UNet, the denoiser callback and our ControlNet hooks, for one call."""
        if self.failure is not None:
            _forget_marked_prompts(p)  # ControlNet may have marked them already
            raise host.as_http_error(self.failure)
        try:
            host.check_sdxl_base(p.sd_model)
            unet = host.unet_of(p.sd_model)
        except InstantIDError as err:
            logger.error("%s", err)
            _forget_marked_prompts(p)
            raise host.as_http_error(err) from None
        assert self.adapter is not None and self.tokens is not None
        self.pass_name = "first"
        a = self.args
        with contextlib.ExitStack() as stack:
            if self.people is not None:
                patch: IPAttentionPatch = MultiIPAttentionPatch(
                    unet,
                    self.adapter,
                    self.people.ip_identities("first"),
                    start=a.id_start,
                    end=a.id_end,
                    router=self.router,
                    precomputed=self.precomputed,
                )
            else:
                patch = IPAttentionPatch(
                    unet,
                    self.adapter,
                    self.tokens.cond,
                    self.tokens.uncond,
                    scale=a.id_weight,
                    start=a.id_start,
                    end=a.id_end,
                    mask=self.masks["first"],
                    router=self.router,
                    precomputed=self.precomputed,
                )
            stack.callback(patch.remove)
            self.patch = patch
            stack.callback(setattr, self, "patch", None)
            stack.enter_context(host.cfg_denoiser_callback(self._denoiser_callback(p)))
            if self.unit is not None and self.unit.param is not None:
                if self.people is not None:
                    self.regional = self._regional_identitynet("first")
                    stack.callback(self._remove_regional)  # the hires pass may have replaced it
                else:
                    tokens = int(self.tokens.cond.shape[1])
                    handle = self.bridge.residual_mask_hook(self.unit, self.mask_tensor, tokens)
                    if handle is not None:
                        stack.callback(handle.remove)
            yield
        if self.failure is not None:
            raise host.as_http_error(self.failure)

    def _denoiser_callback(self, p: Any) -> Any:
        router = self.router

        def on_cfg_denoiser(params: Any) -> None:
            """Tell the router this denoiser call's row layout and the sampling progress."""
            owner = getattr(getattr(params, "denoiser", None), "p", None)
            if owner is not None and owner is not p:
                return  # another job's sampling (1.8+ tells us whose)
            cond = params.text_cond
            crossattn = cond["crossattn"] if isinstance(cond, dict) else cond
            total = max(int(params.total_sampling_steps), 1)
            router.begin_step(
                n_cond=int(crossattn.shape[0]),
                n_total=int(params.x.shape[0]),
                progress=params.sampling_step / total,
            )

        return on_cfg_denoiser

    # -- postprocess_image: the face pass and the likeness score -------------------------------
    def postprocess_image(self, p: Any, pp: Any, script: Any) -> None:
        """Restyle the face(s) of one finished image if asked, then score its likeness."""
        if self.bridge is not None and self.unit is not None:
            self.bridge.drop_unit_infotext(p, self.unit)
        index = face_pass.image_index(p)
        if self.args.face_pass:
            if self.people is not None:
                self.warn("The face pass restyles one person's face; with several people it is skipped.")
            else:
                pp.image = face_pass.restyle_faces(self, p, script, pp.image, index)
        if self.args.likeness:
            scoring.score_output(self, p, pp.image, index)

    # -- nested generations ----------------------------------------------------------------------
    def controlnet_script(self, p: Any) -> Any:
        """ControlNet's script object in ``p``'s runner, or None."""
        if self.bridge is None:
            return None
        return self.bridge._ec.find_cn_script(getattr(p, "scripts", None))

    def preserve_controlnet(self, p: Any) -> contextlib.AbstractContextManager[None]:
        """Around a nested generation: ControlNet's state for this job comes back after it."""
        return self.bridge.preserved(p) if self.bridge is not None else contextlib.nullcontext()

    # -- results -----------------------------------------------------------------------------
    def hint_outputs(self) -> list[Image.Image]:
        """The keypoint images IdentityNet received (first pass, then hires), for "show the hint"."""
        hints = [] if self.hint is None else [Image.fromarray(self.hint)]
        if self.hr_placed is not None:
            hints.append(Image.fromarray(self.hr_placed.hint()))
        elif self.people is not None and "hires" in self.people.passes:
            hints.append(Image.fromarray(self.people.passes["hires"].hint))
        return hints


def _batch_seed(p: Any) -> int:
    """The seed of the batch's first image (the negative noise is drawn from it)."""
    seeds = getattr(p, "seeds", None) or getattr(p, "all_seeds", None) or [getattr(p, "seed", 0)]
    return int(seeds[0])


def _as_tensor(mask: np.ndarray | None) -> torch.Tensor | None:
    return None if mask is None else torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))


def _forget_marked_prompts(p: Any) -> None:
    from .controlnet import forget_marked_prompts

    forget_marked_prompts(p)


def _undo_failed_job(run: Run, p: Any) -> None:
    """What ControlNet set up for a job that did not reach ``postprocess``, then the job itself."""
    from .controlnet import finish_failed_job

    try:
        finish_failed_job(p)
    finally:
        run.close()


def _controlnet_bridge() -> Any:
    from .controlnet import ControlNetBridge

    return ControlNetBridge.detect()


def _resolve_pose(run: Run, p: Any, conditioning: FaceConditioning, resources: Resources) -> FacePose | None:
    """The pose the hint follows, including the img2img init image's face (pose source auto/init)."""
    args = run.args
    if args.pose_source in ("none", "preset"):
        return None
    uses_init = args.pose_source == "init_image" or (args.pose_source == "auto" and frames.is_img2img(p))
    if not uses_init:
        return conditioning.pose
    image = frames.init_image(p)
    if image is None:
        msg = (
            "The pose source 'init image' needs img2img with an init image; in txt2img use the "
            "reference face or a pose image."
        )
        raise InvalidInputError(msg)
    try:
        return pose_from_image(
            resources.analyzer(),
            image,
            "init_image",
            args.pose_face_choice,
            args.pose_face_index,
            mask=frames.inpaint_mask(p),
        )
    except NoFaceError as err:
        if args.pose_source == "init_image":
            raise
        if conditioning.pose is None:
            run.warn(f"{err} IdentityNet runs without keypoints (free pose).")
        else:
            run.warn(f"{err} The keypoints come from {ORIGIN_TEXT[conditioning.pose.origin]} instead.")
        return conditioning.pose


def start(p: Any, args: InstantIDArgs, resources: Resources) -> Run:
    """Prepare a generation; raises InstantIDError (the job undone) on bad input."""
    started = time.perf_counter()
    _forget_earlier_infotext(p)
    run = Run(p, args, resources)
    try:
        _prepare(run, p, resources)
    except BaseException:
        run.close()
        raise
    logger.info(
        "InstantID ready in %.2f s: %s, %s",
        time.perf_counter() - started,
        run.conditioning.source if run.conditioning else "?",
        args.summary(),
    )
    return run


def _forget_earlier_infotext(p: Any) -> None:
    """Drop an earlier job's InstantID infotext (X/Y/Z plot cells share this dict), before this
    job writes its own warnings and settings."""
    params = p.extra_generation_params
    for key in [k for k in params if str(k).startswith(INFOTEXT_PREFIX)]:
        del params[key]


def _prepare(run: Run, p: Any, resources: Resources) -> None:
    args = run.args
    run.adapter_file, run.adapter = resources.adapter(args.ip_adapter_model)
    if args.people:
        run.people = People.prepare(args, p, resources, run.adapter)
        first = run.people.conditionings[0]
        run.conditioning = FaceConditioning(first.embedding, None, "people", len(args.people))
        run.tokens = run.people.tokens[0]
        if any(person.control_weight > 0 for person in args.people):
            _prepare_identitynet(run, p, resources, weight=1.0)  # the strengths go per region
    else:
        conditioning = build_face_conditioning(args, resources.analyzer, resources.identities())
        run.conditioning = conditioning.with_pose(_resolve_pose(run, p, conditioning, resources))
        run.tokens = FaceTokens.from_embedding(run.adapter, run.conditioning.embedding)
        if args.control_weight > 0:
            _prepare_identitynet(run, p, resources, weight=args.control_weight)
    run.place_early(p)
    _seed_init_encoding(run, p)
    _wrap_sampling(run, p)
    _close_with(run, p)
    p.extra_generation_params.update(args.to_infotext(extra=_infotext_extra(run)))


def _prepare_identitynet(run: Run, p: Any, resources: Resources, weight: float) -> None:
    args = run.args
    bridge = _controlnet_bridge()
    run.identitynet_file = resources.identitynet(args.identitynet_model)
    if not bridge.has_script(p):
        run.warn(
            "ControlNet does not run in this generation (a nested generation that leaves it out?), "
            "so IdentityNet is skipped and only the face tokens apply."
        )
        return
    key = bridge.identitynet_model_key(run, p, run.identitynet_file.path)
    bridge.share_model_cache(p)
    run.bridge = bridge
    run.unit = bridge.inject_unit(
        run,
        p,
        black_hint(frames.canvas_size(p)),  # drawn for real once p.init fixed the geometry
        weight,
        args.control_start,
        args.control_end,
        key,
    )


def _seed_init_encoding(run: Run, p: Any) -> None:
    """img2img: draw the init image's VAE sample from the job's seed.

    The WebUI encodes the init images in ``p.init`` with the VAE's posterior *sample*, drawn from
    torch's global generator before it seeds anything for the job, so the same request gave
    another image after a txt2img with another seed, after ControlNet first built IdentityNet
    (its layers' initialisation draws from that generator), or after any job that drew from it.
    The draw is made from the job's first seed on a forked generator: the rest of the process
    sees the generator as it was.
    """
    if getattr(p, "init_images", None) is None:
        return
    init = p.init

    def init_from_seed(*args: Any, **kwargs: Any) -> Any:
        seeds = getattr(p, "all_seeds", None) or [getattr(p, "seed", 0)]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(seeds[0]) & 0xFFFF_FFFF_FFFF_FFFF)
            return init(*args, **kwargs)

    run.replace_method(p, "init", init_from_seed)


def _wrap_sampling(run: Run, p: Any) -> None:
    """Apply the face tokens for exactly the duration of each ``p.sample`` call.

    The wrapper serves whichever job is open on ``p`` when it is called: Loopback and SD upscale
    run several generations on one ``p``, and ControlNet keeps the ``p.sample`` it found on its
    first hook (ours, of the first job) and puts its own over every later wrapper, so later
    generations reach the first job's wrapper, not their own. It passes through when a job is
    already sampling (an outer wrapper of the same job) or none is open.
    """
    original = p.sample

    def sample_with_instantid(*args: Any, **kwargs: Any) -> Any:
        current = run_of(p)
        if current is None or current.patch is not None:
            return original(*args, **kwargs)
        try:
            with current.sampling(p):
                return original(*args, **kwargs)
        except BaseException:
            # The generation fails. The WebUI closes p after it (and we undo the job then), but an
            # X/Y/Z plot cell is a copy of p that nothing closes: undo it now; closing is idempotent.
            _undo_failed_job(current, p)
            raise

    run.replace_method(p, "sample", sample_with_instantid)


def _close_with(run: Run, p: Any) -> None:
    """Close the job when the WebUI closes ``p`` after a failed generation.

    A generation that completes closes the job in ``postprocess`` (which also removes this
    wrapper); one that raised skips every script's ``postprocess``, ControlNet's included, so
    what ControlNet set up for it is undone here as well.
    """
    close = getattr(p, "close", None)
    if not callable(close):
        return

    def close_and_undo(*args: Any, **kwargs: Any) -> Any:
        try:
            return close(*args, **kwargs)
        finally:
            _undo_failed_job(run, p)

    run.replace_method(p, "close", close_and_undo)


def _infotext_extra(run: Run) -> dict[str, str]:
    assert run.adapter_file is not None and run.conditioning is not None
    extra = {
        "InstantID adapter": run.adapter_file.name,
        "InstantID adapter hash": short_hash(run.adapter_file.path),
        "InstantID source": run.conditioning.source,
    }
    if run.identitynet_file is not None:
        extra["InstantID IdentityNet"] = run.identitynet_file.name
        extra["InstantID IdentityNet hash"] = short_hash(run.identitynet_file.path)
    if run.people is not None:
        del extra["InstantID source"]
        extra["InstantID people"] = run.people.infotext()
        return extra
    pose = run.conditioning.pose
    if run.args.pose_source == "preset":
        extra["InstantID keypoints from"] = f"preset {run.args.pose_preset}"
    elif run.args.pose_source == "auto":
        extra["InstantID keypoints from"] = "none" if pose is None else pose.origin.replace("_", " ")
    return extra


def run_of(p: Any) -> Run | None:
    from ..job.lifecycle import job_of

    job = job_of(p)
    return job if isinstance(job, Run) else None


def finish(p: Any, processed: Any = None) -> None:
    """``postprocess``: add the hint image if asked, note warnings, and undo everything."""
    run = run_of(p)
    if run is None:
        return
    try:
        if processed is not None and run.args.show_hint:
            processed.images.extend(run.hint_outputs())
    finally:
        run.close()


def fail_job(p: Any, error: InstantIDError) -> None:
    """A hook after ``before_process`` failed: make sampling stop with ``error``."""
    run = run_of(p)
    if run is not None:
        run.fail(error)
