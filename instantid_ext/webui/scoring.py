"""The likeness score of each output, written into its infotext (one person or several).

The score is the cosine between ArcFace embeddings of the output's face and the reference
(:mod:`instantid_ext.faces.likeness`); the reference is built once per job. With several people,
each person is scored on the faces inside that person's region.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ..args import InstantIDArgs
from ..faces.likeness import format_infotext, format_summary
from ..job.conditioning import FaceConditioning, FacePose
from ..job.resources import Resources
from .people import People


class ScoredRun(Protocol):
    """What scoring needs of the generation whose outputs it scores (a :class:`~.run.Run`)."""

    args: InstantIDArgs
    resources: Resources
    conditioning: FaceConditioning | None
    likeness_reference: Any
    scores: list[tuple[int, Any]]

    @property
    def pose(self) -> FacePose | None: ...

    @property
    def people(self) -> People | None: ...


logger = logging.getLogger(__name__)

LIKENESS_KEY = "InstantID likeness"


def score_output(run: ScoredRun, p: Any, image: Image.Image, index: int) -> None:
    """Score output image ``index`` and write the result where its infotext is built from."""
    if run.people is not None:
        _score_people(run, p, image, index)
    else:
        _score_one(run, p, image, index)


def _score_one(run: ScoredRun, p: Any, image: Image.Image, index: int) -> None:
    scorer = run.resources.likeness_scorer()
    if run.likeness_reference is None:
        assert run.conditioning is not None
        args = run.args
        identity_kps = None
        if args.identity and run.pose is not None and run.pose.origin == "identity":
            identity_kps = run.pose.kps
        run.likeness_reference = scorer.reference(
            run.conditioning.embedding,
            [] if args.identity else args.images,
            weights=list(args.image_weights) or None,
            face_choice=args.face_choice,
            face_index=args.face_index,
            kps=identity_kps,
        )
    result = scorer.score(image, run.likeness_reference, label=f"output image {index + 1}")
    run.scores.append((index, result))
    # Written per image: the WebUI builds each image's infotext right after this hook.
    p.extra_generation_params[LIKENESS_KEY] = format_infotext(result)
    logger.info("Image %d: %s", index + 1, format_summary(result))
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(f"InstantID image {index + 1}: {format_summary(result)}")


def _score_people(run: ScoredRun, p: Any, image: Image.Image, index: int) -> None:
    """Each person's likeness: the best of the output's faces inside that person's region."""
    people = run.people
    assert people is not None
    scorer = run.resources.likeness_scorer()
    if run.likeness_reference is None:
        run.likeness_reference = [
            scorer.reference(
                cond.embedding,
                [] if person.identity else person.images,
                weights=list(person.image_weights) or None,
                face_choice="largest" if person.face_index is None else "index",
                face_index=person.face_index or 0,
            )
            for person, cond in zip(run.args.people, people.conditionings, strict=True)
        ]
    parts = []
    final = (
        people.passes.get("hires") or people.passes["first"]
    )  # the regions of the pass that made the image
    for number, (reference, mask) in enumerate(
        zip(run.likeness_reference, final.masks, strict=True), start=1
    ):
        result = scorer.score(image, reference, label=f"output image {index + 1}")
        inside = mask_at(mask, image.size)
        scores = [
            face.similarity
            for face in result.faces
            if inside[
                min(int((face.bbox[1] + face.bbox[3]) / 2), inside.shape[0] - 1),
                min(int((face.bbox[0] + face.bbox[2]) / 2), inside.shape[1] - 1),
            ]
        ]
        parts.append(f"{number}: {max(scores):.2f}" if scores else f"{number}: no face")
    text = "; ".join(parts) + f" ({scorer_name(scorer)})"
    p.extra_generation_params[LIKENESS_KEY] = text
    logger.info("Image %d likeness per person: %s", index + 1, text)


def mask_at(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A canvas mask as a boolean map at an image's ``size`` (outputs may be upscaled)."""
    if (mask.shape[1], mask.shape[0]) != size:
        mask = np.asarray(Image.fromarray((mask > 0).astype(np.uint8) * 255).resize(size, Image.NEAREST))
    return mask > 0


def scorer_name(scorer: Any) -> str:
    return "buffalo_l" if getattr(scorer, "independent", None) is not None else "antelopev2"
