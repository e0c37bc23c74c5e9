"""One generation with InstantID on a Forge-family host (Forge Classic, reForge).

The job is :class:`~.run.Run`'s (arguments, faces, tokens, people, geometry, face pass,
likeness, cleanup); only what lies below the script differs. IdentityNet is loaded with the
host's ControlNet loader when the job starts, and in every sampling pass
(``process_before_every_sampling``, after the host has reset its UNet patcher for the pass)
the UNet patcher the pass will use is replaced by a clone that carries the face attention
on its 70 attn2 layers and IdentityNet, with the face tokens as its context, at the head of
its ControlNet chain (:meth:`ForgeRun.before_every_sampling`). The host puts its own patcher
back for the next batch or pass, so nothing of the job stays in the model; what the job
holds (its face keys/values, the region hooks of several people) is dropped when it closes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..errors import InstantIDError
from ..forge.backend import IdentityNetPass, backend
from ..forge.identitynet import FaceContext
from ..job.conditioning import black_hint
from ..job.resources import Resources
from ..method.attn2_replace import FaceAttention
from . import frames, host
from .run import Run


class ForgeRun(Run):
    """A :class:`Run` whose UNet and IdentityNet are patched through the host's UNet patcher."""

    def __init__(self, p: Any, args: Any, resources: Resources) -> None:
        found = backend()  # before the job registers itself on p: a host without the API refuses here
        super().__init__(p, args, resources)
        self.backend = found
        self.identitynet: Any = None
        """The host's ControlNet for IdentityNet, or None when IdentityNet does not run."""
        self.identitynet_weight = 0.0
        self.faces: dict[str, FaceAttention] = {}
        """The face attention of each pass ("first", "hires"), made on its first sampling pass."""
        self.live_pass: object = None
        """The token of the sampling pass now running; the nodes of earlier passes see another."""
        self.sampling_now = False
        self.own("the face attention of each pass", self._forget_faces)

    @property
    def is_sampling(self) -> bool:
        return self.sampling_now

    def _forget_faces(self) -> None:
        for face in self.faces.values():
            face.clear()
        self.faces.clear()

    def prepare_identitynet(self, p: Any, resources: Resources, weight: float) -> None:
        """Load IdentityNet with the host's ControlNet loader (once per file, kept between jobs)."""
        self.identitynet_file = resources.identitynet(self.args.identitynet_model)
        self.identitynet = self.backend.load_identitynet(self.identitynet_file.path)
        self.identitynet_weight = weight

    def _noise_tokens(self, p: Any) -> None:
        seeds = self.noise_seeds
        super()._noise_tokens(p)
        if self.noise_seeds != seeds:
            self._forget_faces()  # the uncond tokens changed

    def enter_hires(self, p: Any) -> None:
        """``before_hr``: the next sampling pass is the hires one (its masks and hint)."""
        self.pass_name = "hires"

    # -- p.sample: the checkpoint is final ---------------------------------------------------
    @contextlib.contextmanager
    def sampling(self, p: Any) -> Iterator[None]:
        """The sampling progress for the ID window and, with several people, IdentityNet's region
        hooks, for one ``p.sample`` call; the UNet is patched per pass by the host's hook."""
        self.checked_unet(p)
        self.pass_name = "first"
        with contextlib.ExitStack() as stack:
            stack.enter_context(host.cfg_denoiser_callback(self._denoiser_callback(p)))
            stack.callback(setattr, self, "live_pass", None)
            stack.callback(self._unbind_identitynet)
            self.sampling_now = True
            stack.callback(setattr, self, "sampling_now", False)
            yield
        if self.failure is not None:
            raise host.as_http_error(self.failure)

    def before_every_sampling(self, p: Any) -> None:
        """``process_before_every_sampling``: patch the UNet patcher this pass will use. The host
        reports and swallows an error raised here, so a failed job stops its sampling itself."""
        try:
            if self.failure is None:
                self._patch_pass(p)
        except InstantIDError as err:
            self.fail(err)
        finally:
            if self.failure is not None:
                _stop_sampling(p, self.failure)

    def _patch_pass(self, p: Any) -> None:
        assert self.adapter is not None and self.cast is not None
        name = self.pass_name
        face = self.faces.get(name)
        if face is None:
            a = self.args
            face = FaceAttention(
                self.adapter,
                self.cast.ip_identities(name),
                start=a.id_start,
                end=a.id_end,
                progress=lambda _options: self.router.progress,  # set by the denoiser callback
                text_attention=self.backend.text_attention,
            )
            self.faces[name] = face
        token = self.live_pass = object()
        objects = p.sd_model.forge_objects
        objects.unet = self.backend.patched_unet(objects.unet, face, self._identitynet_pass(p, name, token))

    def _identitynet_pass(self, p: Any, name: str, token: object) -> IdentityNetPass | None:
        if self.identitynet is None:
            return None
        cast = self.cast
        assert cast is not None
        hint = cast.hint(name)
        if hint is None:
            hint = cast.hint("first")
        if hint is None:
            hint = black_hint(frames.canvas_size(p))
        cond, uncond = cast.context_tokens()
        face = FaceContext(cond, uncond, live=lambda: self.live_pass is token)
        mask = None
        if cast.people_mode:
            self._bind_people(name)
        elif self.args.face_region_only:
            mask = cast.mask_tensor(name)
        a = self.args
        return IdentityNetPass(
            self.identitynet, face, hint, self.identitynet_weight, a.control_start, a.control_end, mask
        )

    def _bind_people(self, name: str) -> None:
        """Several people: IdentityNet's attention bound to each person's region, and the
        strengths as its residual map (the node's weight is 1)."""
        from ..method.identitynet_regions import RegionalIdentityNet

        self._unbind_identitynet()
        people = self.people
        assert people is not None
        control_model = self.identitynet.control_model
        self.regional = RegionalIdentityNet(control_model, people.masks(name), people.strengths)


def _stop_sampling(p: Any, error: InstantIDError) -> None:
    """Make the pass stop at its first UNet call with ``error`` (the job has failed)."""
    objects = p.sd_model.forge_objects
    unet = objects.unet.clone()

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise host.as_http_error(error)

    unet.set_model_unet_function_wrapper(fail)
    objects.unet = unet
