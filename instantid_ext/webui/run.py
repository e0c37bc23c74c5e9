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

import torch
from PIL import Image

from ..args import INFOTEXT_PREFIX, InstantIDArgs
from ..errors import InstantIDError, InvalidInputError, NoFaceError
from ..job.conditioning import (
    ORIGIN_TEXT,
    FaceConditioning,
    FacePose,
    FaceTokens,
    black_hint,
    build_face_conditioning,
    pose_from_image,
)
from ..job.lifecycle import Job
from ..job.resources import Resources
from ..method.attention import IPAttentionPatch, MultiIPAttentionPatch, PrecomputedKV
from ..method.ip_adapter import IPAdapter
from ..method.rows import RowRouter
from ..models.discovery import ModelFile, short_hash
from . import face_pass, frames, host, scoring
from .controlnet import ControlNetBridge, finish_failed_job, forget_marked_prompts
from .people import People
from .person import OnePerson

logger = logging.getLogger(__name__)


Cast = OnePerson | People
"""The people of a run: one reference face, or up to four people in regions."""


class Run(Job):
    """What one InstantID generation prepared, on top of the :class:`Job` life cycle."""

    def __init__(self, p: Any, args: InstantIDArgs, resources: Resources) -> None:
        super().__init__(p, args)
        self.resources = resources
        self.conditioning: FaceConditioning | None = None
        self.cast: Cast | None = None
        """The people in the picture, one to four; set by :func:`start`."""
        self.adapter: IPAdapter | None = None
        self.adapter_file: ModelFile | None = None
        self.identitynet_file: ModelFile | None = None
        self.bridge: Any = None  # ControlNetBridge when IdentityNet runs
        self.unit: Any = None  # its InjectedUnit
        self.router = RowRouter()
        self.precomputed: PrecomputedKV = {}
        """Face keys/values per layer, computed in the first UNet call and reused by the next ones."""
        self.early_canvas: tuple[int, int] | None = None
        """The canvas the layout was made for in ``before_process`` (:meth:`place_early`)."""
        self.pass_name = "first"
        self.patch: IPAttentionPatch | None = None
        self.noise_seeds: tuple[int, ...] | None = None
        """The seeds the negative noise was drawn from, one per image of the batch."""
        self.regional: Any = None
        """IdentityNet's region hook while sampling: several people's region-bound attention, or
        one person's face-region mask on ControlNet 1.1.444-1.1.445."""
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
    def is_sampling(self) -> bool:
        """Whether a ``p.sample`` call of this job is running (its face tokens are on)."""
        return self.patch is not None

    def before_every_sampling(self, p: Any) -> None:
        """Forge-family hosts patch their UNet per sampling pass here; AUTOMATIC1111 has no such
        hook, and its face tokens go on for the whole ``p.sample`` call (:meth:`sampling`)."""

    @property
    def pose(self) -> FacePose | None:
        return None if self.conditioning is None else self.conditioning.pose

    @property
    def people(self) -> People | None:
        """Several people (``args.people``), else None."""
        return self.cast if isinstance(self.cast, People) else None

    def prepare_identitynet(self, p: Any, resources: Resources, weight: float) -> None:
        """Put IdentityNet into the job as one ControlNet unit with unit weight ``weight``."""
        args = self.args
        bridge = ControlNetBridge.detect()
        self.identitynet_file = resources.identitynet(args.identitynet_model)
        if not bridge.has_script(p):
            self.warn(
                "ControlNet does not run in this generation (a nested generation that leaves it out?), "
                "so IdentityNet is skipped and only the face tokens apply."
            )
            return
        key = bridge.identitynet_model_key(self, p, self.identitynet_file.path)
        bridge.share_model_cache(p)
        self.bridge = bridge
        self.unit = bridge.inject_unit(
            self,
            p,
            black_hint(frames.canvas_size(p)),  # drawn for real once p.init fixed the geometry
            weight,
            args.control_start,
            args.control_end,
            key,
        )

    # -- process_batch: the geometry is final ----------------------------------------------
    def on_batch(self, p: Any) -> None:
        """Draw the hint and the face mask where the sampler works, and give them to ControlNet."""
        # The WebUI has loaded this batch's checkpoint (override settings included) by now; an
        # SD1.5 model also makes ControlNet drop its units, and this sentence says why.
        host.check_sdxl_base(p.sd_model)
        if self.early_canvas is not None and self.early_canvas != frames.canvas_size(p):
            self._forget_layout()  # another script resized the job after before_process
        cast = self.cast
        assert cast is not None
        if not cast.laid_out:
            cast.place(p)
        if self.args.noise > 0:
            self._noise_tokens(p)
        if self.bridge is None or self.unit is None:
            return
        cond, uncond = cast.context_tokens()
        self.bridge.apply_face_context(
            p,
            self.unit,
            cond,
            uncond,
            hint=cast.hint("first"),
            hr_hint=cast.hint("hires"),
            region_mask=cast.unit_mask("first"),
            images_of=self.router.images_for,
        )

    def place_early(self, p: Any) -> None:
        """Lay the face(s) out in ``before_process`` where the canvas is already final, so that a
        layout that cannot work (regions that overlap, too few faces for ``auto``, the face off
        the canvas with "Face region only") is refused before ControlNet sets up its units."""
        if not frames.canvas_is_final(p):
            return
        self.early_canvas = frames.canvas_size(p)
        assert self.cast is not None
        self.cast.place(p)
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def _forget_layout(self) -> None:
        self.early_canvas = None
        assert self.cast is not None
        self.cast.forget_layout()

    def _noise_tokens(self, p: Any) -> None:
        """Uncond tokens from seeded noise, each image's from its own seed, as the noise option asks:
        an image of a batch gets the tokens it gets alone with its seed."""
        seeds = batch_seeds(p)
        if seeds == self.noise_seeds:
            return
        assert self.adapter is not None and self.cast is not None
        self.cast.renoise(self.adapter, self.args.noise, seeds)
        self.noise_seeds = seeds
        self.precomputed.clear()  # the uncond keys/values changed

    def enter_hires(self, p: Any) -> None:
        """``before_hr``: mark the hires prompts for ControlNet; switch the face masks to the hires canvas."""
        self.pass_name = "hires"
        if self.bridge is not None:
            self.bridge.mark_hires_conds(p)
            if self.unit is not None:
                self.bridge.enter_hires(self.unit)
        assert self.cast is not None
        masks = self.cast.hires_masks()
        if masks is None:
            return
        if self.patch is not None:
            self.patch.set_masks(masks)
        if self.unit is not None:
            self.bridge.set_region_mask(self.unit, self.cast.unit_mask("hires"))
        if self.regional is not None:
            self._bind_identitynet("hires")

    def _bind_identitynet(self, name: str) -> None:
        """IdentityNet's region hook for pass ``name`` (replacing the previous pass's)."""
        self._unbind_identitynet()
        assert self.cast is not None
        self.regional = self.cast.identitynet_hook(self.bridge, self.unit, name, lambda: self.pass_name)

    def _unbind_identitynet(self) -> None:
        if self.regional is not None:
            self.regional.remove()
            self.regional = None

    # -- p.sample: the checkpoint is final ---------------------------------------------------
    def checked_unet(self, p: Any) -> Any:
        """The UNet to sample with, once the job has not failed and the checkpoint is SDXL base;
        else the job's sentence as an HTTP error (prompts ControlNet may have marked forgotten)."""
        if self.failure is not None:
            forget_marked_prompts(p)  # ControlNet may have marked them already
            raise host.as_http_error(self.failure)
        try:
            host.check_sdxl_base(p.sd_model)
            return host.unet_of(p.sd_model)
        except InstantIDError as err:
            logger.error("%s", err)
            forget_marked_prompts(p)
            raise host.as_http_error(err) from None

    @contextlib.contextmanager
    def sampling(self, p: Any) -> Iterator[None]:
        """Face tokens in the UNet, the denoiser callback and our ControlNet hooks, for one call."""
        unet = self.checked_unet(p)
        assert self.adapter is not None and self.cast is not None
        self.pass_name = "first"
        a = self.args
        with contextlib.ExitStack() as stack:
            patch = MultiIPAttentionPatch(
                unet,
                self.adapter,
                self.cast.ip_identities("first"),
                start=a.id_start,
                end=a.id_end,
                router=self.router,
                precomputed=self.precomputed,
            )
            stack.callback(patch.remove)
            self.patch = patch
            stack.callback(setattr, self, "patch", None)
            stack.enter_context(host.cfg_denoiser_callback(self._denoiser_callback(p)))
            if self.unit is not None and self.unit.param is not None:
                self._bind_identitynet("first")
                stack.callback(self._unbind_identitynet)  # the hires pass may have replaced it
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
            if self.cast is not None and self.cast.people_mode:
                self.warn("The face pass restyles one person's face; with several people it is skipped.")
            else:
                pp.image = face_pass.restyle_faces(self, p, script, pp.image, index)
        if self.args.likeness:
            scoring.score_output(self, p, pp.image, index)

    # -- nested generations ----------------------------------------------------------------------
    def controlnet_script(self, p: Any) -> Any:
        """ControlNet's script object in ``p``'s runner, or None."""
        return None if self.bridge is None else self.bridge.script_of(p)

    def preserve_controlnet(self, p: Any) -> contextlib.AbstractContextManager[None]:
        """Around a nested generation: ControlNet's state for this job comes back after it."""
        return self.bridge.preserved(p) if self.bridge is not None else contextlib.nullcontext()

    # -- results -----------------------------------------------------------------------------
    def hint_outputs(self) -> list[Image.Image]:
        """The keypoint images IdentityNet received (first pass, then hires), for "show the hint"."""
        return [] if self.cast is None else self.cast.hint_images()


def batch_seeds(p: Any) -> tuple[int, ...]:
    """The seeds of the batch's images, in batch order (the negative noise of each is drawn from
    its own): ``p.seeds``, which the WebUI sets per batch, else this batch's slice of
    ``p.all_seeds``, else ``p.seed``."""
    seeds = getattr(p, "seeds", None)
    if not seeds:
        every = getattr(p, "all_seeds", None)
        size = max(int(getattr(p, "batch_size", 1) or 1), 1)
        if every:
            start = int(getattr(p, "iteration", 0) or 0) * size
            seeds = every[start : start + size] or every[:size]
        else:
            seeds = [getattr(p, "seed", 0)]
    return tuple(int(seed) for seed in seeds)


def _undo_failed_job(run: Run, p: Any) -> None:
    """What ControlNet set up for a job that did not reach ``postprocess``, then the job itself."""
    try:
        finish_failed_job(p)
    finally:
        run.close()


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


def start(p: Any, args: InstantIDArgs, resources: Resources, kind: type[Run] | None = None) -> Run:
    """Prepare a generation; raises InstantIDError (the job undone) on bad input. ``kind`` is the
    host's Run class (:class:`Run` for AUTOMATIC1111 with sd-webui-controlnet)."""
    started = time.perf_counter()
    _forget_earlier_infotext(p)
    run = (kind or Run)(p, args, resources)
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
    weight = _prepare_cast(run, p, resources, run.adapter)
    if weight > 0:
        run.prepare_identitynet(p, resources, weight)
    run.place_early(p)
    _seed_init_encoding(run, p)
    _wrap_sampling(run, p)
    _close_with(run, p)
    p.extra_generation_params.update(args.to_infotext(extra=_infotext_extra(run)))


def _prepare_cast(run: Run, p: Any, resources: Resources, adapter: IPAdapter) -> float:
    """The people of the run (one reference face is a cast of one); returns IdentityNet's unit weight."""
    args = run.args
    if args.people:
        people = People.prepare(args, p, resources, adapter)
        first = people.conditionings[0]
        run.conditioning = FaceConditioning(first.embedding, None, "people", len(args.people))
        run.cast = people
        # The strengths go per region, as the unit's residual map.
        return 1.0 if any(person.control_weight > 0 for person in args.people) else 0.0
    conditioning = build_face_conditioning(args, resources.analyzer, resources.identities())
    run.conditioning = conditioning.with_pose(_resolve_pose(run, p, conditioning, resources))
    tokens = FaceTokens.from_embedding(adapter, run.conditioning.embedding)
    run.cast = OnePerson(args, run.conditioning, tokens, run.warn, run.fail)
    return args.control_weight


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
        if current is None or current.is_sampling:
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
    assert run.cast is not None
    run.cast.infotext(extra)
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
