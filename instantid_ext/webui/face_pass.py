"""The face pass as nested WebUI generations, one "Only masked" inpaint per face.

Each face of a finished image is restyled by a generation of its own: the WebUI's img2img
with the face mask, "Only masked" at the face pass's working size, run by a script runner
that holds only ControlNet and this script, with this script's arguments switched to the
face (:func:`instantid_ext.job.face_pass.nested_arguments`). The nested generation is a job of
its own (:mod:`instantid_ext.job.lifecycle`): it undoes what it changes, and ControlNet's state of the outer
generation is put back afterwards (:meth:`ControlNetBridge.preserved`), so later batches of
the outer job sample as before.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Protocol

from PIL import Image

from ..args import InstantIDArgs
from ..errors import InstantIDError
from ..job.face_pass import face_targets, nested_arguments, prompt_for
from ..job.resources import Resources
from . import host


class OuterRun(Protocol):
    """What the face pass needs of the generation whose faces it restyles (a :class:`~.run.Run`)."""

    args: InstantIDArgs
    resources: Resources

    def warn(self, message: str) -> None: ...

    def controlnet_script(self, p: Any) -> Any: ...

    def preserve_controlnet(self, p: Any) -> contextlib.AbstractContextManager[None]: ...


logger = logging.getLogger(__name__)


def image_index(p: Any) -> int:
    """The number of the image being post-processed within the whole job (seeds, prompts)."""
    return int(getattr(p, "iteration", 0) or 0) * int(p.batch_size) + int(getattr(p, "batch_index", 0) or 0)


def restyle_faces(run: OuterRun, p: Any, script: Any, image: Image.Image, index: int) -> Image.Image:
    """The face pass over one finished image; returns the image with its face(s) redrawn."""
    args = run.args
    analyzer = run.resources.analyzer()
    faces = analyzer.analyze(image, label=f"output image {index + 1}")
    targets = face_targets(faces, image.size, args.face_pass_faces, args.face_pass_index)
    if not targets:
        run.warn(f"The face pass found no face in output image {index + 1}; it is left as generated.")
        return image
    for target in targets:
        image = _restyle_one(run, p, script, image, target, index)
    logger.info("Face pass: restyled %d face(s) of image %d", len(targets), index + 1)
    return image


def _restyle_one(
    run: OuterRun, p: Any, script: Any, image: Image.Image, target: Any, index: int
) -> Image.Image:
    args = run.args
    seeds = getattr(p, "all_seeds", None) or [getattr(p, "seed", -1)]
    subseeds = getattr(p, "all_subseeds", None) or [getattr(p, "subseed", -1)]
    negatives = getattr(p, "all_negative_prompts", None)
    nested = host.nested_inpaint(
        p,
        image=image,
        mask=target.mask(image.size),
        mask_blur=target.feather,
        padding=args.face_pass_padding,
        size=args.face_pass_resolution,
        strength=args.face_pass_strength,
        prompt=prompt_for(args, getattr(p, "all_prompts", None), index, str(getattr(p, "prompt", ""))),
        negative_prompt=negatives[index] if negatives and index < len(negatives) else str(p.negative_prompt),
        seed=int(seeds[min(index, len(seeds) - 1)]) + target.number,
        subseed=int(subseeds[min(index, len(subseeds) - 1)]),
    )
    nested.scripts, nested.script_args = _nested_scripts(run, p, script)
    with run.preserve_controlnet(p):
        processed = host.process_nested(nested)
    if not processed.images:
        msg = f"The face pass produced no image for face {target.number} of output image {index + 1}."
        raise InstantIDError(msg)
    result = processed.images[0]
    return result if result.size == image.size else result.resize(image.size, Image.LANCZOS)


def _nested_scripts(run: OuterRun, p: Any, script: Any) -> tuple[Any, tuple]:
    """A runner with only ControlNet and this script, and the arguments for it.

    ControlNet's slots are emptied (the user's units belong to the whole picture, not to a
    face crop; ours is added by the nested job), and this script's slot holds the face's
    arguments. Other scripts' slots are kept but their scripts do not run.
    """
    keep = [script]
    args = list(p.script_args)
    controlnet = run.controlnet_script(p)
    if controlnet is not None:
        keep.insert(0, controlnet)
        for slot in range(int(controlnet.args_from), int(controlnet.args_to)):
            args[slot] = None
    args[int(script.args_from)] = nested_arguments(run.args)
    runner = copy.copy(p.scripts)
    runner.alwayson_scripts = keep
    runner.selectable_scripts = []
    if hasattr(runner, "callback_map"):  # 1.9+: ordered hooks are cached per runner
        runner.callback_map = {}
    return runner, tuple(args)
