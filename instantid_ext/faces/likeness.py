"""Did the output keep the identity? The ArcFace cosine similarity to the reference, banded.

The standard identity measure for face-conditioned generation ("FaceSim") is the cosine
similarity between the ArcFace embedding of the reference and that of the face in the output.
:class:`LikenessScorer` detects the face(s) in an output, scores each against the reference and
returns a frozen :class:`LikenessResult`; "no face found in the output" is a state of that
result, not an exception.

Which recognizer scores
    Scoring with the encoder that produced the conditioning (antelopev2's glintr100) flatters
    the result: InstantID was trained to reproduce exactly what that network sees. When
    insightface's ``buffalo_l`` pack (w600k_r50, another ArcFace trained on other data) is
    installed next to antelopev2, it scores instead. The reference must then be embedded by
    the same network as the output, so :meth:`LikenessScorer.reference` takes the reference
    photos and re-embeds them with buffalo_l (same face choice, same weights, same raw-vector
    mean as the conditioning). A saved identity has no photos, so only the conditioning
    encoder can score it; the result says so (``independent`` is False and ``note`` explains).

Bands (one set for both recognizers: both are ArcFace-loss ResNets with similar score scales)
    Published ArcFace verification thresholds lie around 0.3–0.4 for glint/ms1m-trained R100s
    (0.28 is a best-accuracy threshold on LFW; deepface accepts ArcFace pairs above 0.32 and its
    buffalo_l pairs above 0.45). Two real photos of one person score a median of ≈0.46;
    InstantID outputs ≈0.7 with antelopev2.

    * ``"likely lost"`` below 0.30: under those thresholds, so a face-verification system would
      call the output a different person.
    * ``"borderline"`` 0.30–0.40: inside the threshold range; verifiers disagree, and people
      typically see "a resemblance" rather than the person.
    * ``"same-person range"`` 0.40–0.60: above most verification thresholds and around the
      same-person median (≈0.46): as close as a second real photo of the person would be.
    * ``"strong"`` 0.60 and above: beyond what most real photo pairs reach, where InstantID
      outputs with good likeness land.

    Scores from the conditioning encoder run high (see above): read its "strong" with care.

Copy-paste hint
    A face that matches one reference photo both in likeness (≥ 0.80: beyond the spread of
    genuinely different photos of a person, near-duplicate territory) and in keypoint layout
    (the five points in an eye-centred frame scaled by the inter-ocular distance, within 0.05
    inter-ocular distances RMS: a few percent is the 5-point detector's own error, while turning
    the head by roughly 15° or tilting it by roughly 4° exceeds it) is flagged: the output
    reproduces the reference photo's face and pose instead of making a new picture of the person.
    Roll is kept in the comparison (a tilted head is part of the pose). With the pose taken from
    the reference (IdentityNet follows its keypoints) the layout almost always matches, so there
    the hint rests on the likeness; with a pose image it needs both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import InstantIDError, InvalidInputError
from ..images import ChannelOrder, ImageLike
from .analysis import EMBEDDING_DIM, ChoiceMode, Face, FaceAnalyzer, ProvidersLike, mean_embedding
from .antelopev2 import find_root
from .packs import BUFFALO_L, FacePack, RootLike, find_optional_pack

logger = logging.getLogger(__name__)

Band = Literal["strong", "same-person range", "borderline", "likely lost"]
State = Literal["scored", "no face"]

STRONG_MIN = 0.60
SAME_PERSON_MIN = 0.40
BORDERLINE_MIN = 0.30
COPY_PASTE_MIN_SIMILARITY = 0.80
COPY_PASTE_MAX_POSE_DISTANCE = 0.05
NO_FACE = "no face found in the output"

_MEANING: dict[Band, str] = {
    "strong": "the identity is clearly kept",
    "same-person range": "as close as two real photos of one person usually are",
    "borderline": "a face-verification system might not accept it as the same person",
    "likely lost": "the identity is likely lost",
}


# --------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------


def band_for(similarity: float) -> Band:
    """The band of a cosine similarity (lower bounds inclusive; see the module docstring)."""
    if similarity >= STRONG_MIN:
        return "strong"
    if similarity >= SAME_PERSON_MIN:
        return "same-person range"
    if similarity >= BORDERLINE_MIN:
        return "borderline"
    return "likely lost"


def _vector(embedding: np.ndarray | Face, what: str) -> np.ndarray:
    vec = np.asarray(embedding.embedding if isinstance(embedding, Face) else embedding, dtype=np.float64)
    if vec.size != EMBEDDING_DIM:
        msg = f"The {what} has shape {tuple(vec.shape)}; a face embedding has {EMBEDDING_DIM} values."
        raise InvalidInputError(msg)
    vec = vec.reshape(EMBEDDING_DIM)
    norm = float(np.linalg.norm(vec))
    if not np.isfinite(norm) or norm == 0.0:
        msg = f"The {what} is all zeros or not finite, so it cannot be compared with a face."
        raise InvalidInputError(msg)
    return vec


def cosine_similarity(a: np.ndarray | Face, b: np.ndarray | Face) -> float:
    """Cosine similarity of two raw 512-d embeddings (in float64), in [-1, 1]."""
    va, vb = _vector(a, "first face embedding"), _vector(b, "second face embedding")
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


def normalized_kps(kps: np.ndarray) -> np.ndarray:
    """Keypoints in an eye-centred frame: origin between the eyes, unit = inter-ocular distance.

    Position and scale drop out; roll, yaw, pitch and the mouth's shape remain. Raises
    :class:`InvalidInputError` when the two eyes coincide.
    """
    pts = np.asarray(kps, dtype=np.float64).reshape(5, 2)
    centre = (pts[0] + pts[1]) / 2.0
    iod = float(np.linalg.norm(pts[1] - pts[0]))
    if not np.isfinite(iod) or iod < 1e-6:
        msg = "These face keypoints have both eyes at the same place, so the pose cannot be compared."
        raise InvalidInputError(msg)
    return (pts - centre) / iod


def pose_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance of the five keypoints of two faces, in inter-ocular distances (0 = same layout)."""
    diff = normalized_kps(a) - normalized_kps(b)
    return float(np.sqrt(np.mean(np.sum(diff**2, axis=1))))


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


def _frozen(arr: Any, shape: tuple[int, ...]) -> np.ndarray:
    out = np.array(arr, dtype=np.float32).reshape(shape)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class ReferenceFace:
    """One reference photo's face, in the scoring recognizer's space (for the copy-paste hint)."""

    embedding: np.ndarray  # float32 (512,)
    kps: np.ndarray | None  # float32 (5, 2) in that photo's pixels; None: unknown


@dataclass(frozen=True, eq=False)
class LikenessReference:
    """What outputs are compared with; made by :meth:`LikenessScorer.reference`.

    ``embedding`` is the raw mean embedding in the space of ``pack``'s recognizer: the one
    InstantID used when ``independent`` is False, the photos re-embedded by the second
    recognizer when it is True. ``note`` says why the conditioning encoder scores, if it does.
    """

    embedding: np.ndarray  # float32 (512,)
    pack: FacePack
    independent: bool
    faces: tuple[ReferenceFace, ...] = ()
    note: str = ""

    @property
    def recognizer(self) -> str:
        """E.g. ``"antelopev2 (glintr100)"`` or ``"buffalo_l (w600k_r50)"``."""
        return self.pack.label


@dataclass(frozen=True, eq=False)
class ScoredFace:
    """One face found in the output, in the output's pixel coordinates."""

    bbox: np.ndarray  # float32 (4,): x1, y1, x2, y2
    kps: np.ndarray  # float32 (5, 2)
    det_score: float
    similarity: float  # cosine to the reference embedding
    pose_distance: float | None  # to the closest reference photo's keypoints; None: none known
    copy_paste: bool

    @property
    def band(self) -> Band:
        return band_for(self.similarity)


@dataclass(frozen=True, eq=False)
class LikenessResult:
    """The likeness of one output image. ``faces`` are ordered left to right."""

    faces: tuple[ScoredFace, ...]
    recognizer: str  # "antelopev2 (glintr100)" or "buffalo_l (w600k_r50)"
    pack: str  # "antelopev2" or "buffalo_l"
    independent: bool  # scored by a recognizer that took no part in the generation
    note: str = ""  # why the conditioning encoder scored, when it did

    @property
    def state(self) -> State:
        return "scored" if self.faces else "no face"

    @property
    def found(self) -> bool:
        return bool(self.faces)

    @property
    def best_index(self) -> int | None:
        """Index in ``faces`` of the face most similar to the reference; None without faces."""
        if not self.faces:
            return None
        return max(range(len(self.faces)), key=lambda i: self.faces[i].similarity)

    @property
    def best(self) -> ScoredFace | None:
        index = self.best_index
        return None if index is None else self.faces[index]

    @property
    def similarity(self) -> float | None:
        best = self.best
        return None if best is None else best.similarity

    @property
    def band(self) -> Band | None:
        best = self.best
        return None if best is None else best.band

    @property
    def copy_paste(self) -> bool:
        """The best face reproduces a reference photo's face and pose (see the module docstring)."""
        best = self.best
        return best is not None and best.copy_paste

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (for the API and logs)."""
        return {
            "state": self.state,
            "similarity": self.similarity,
            "band": self.band,
            "copy_paste": self.copy_paste,
            "recognizer": self.recognizer,
            "independent": self.independent,
            "note": self.note,
            "best_index": self.best_index,
            "faces": [
                {
                    "bbox": [float(v) for v in f.bbox],
                    "kps": [[float(x), float(y)] for x, y in f.kps],
                    "det_score": f.det_score,
                    "similarity": f.similarity,
                    "band": f.band,
                    "pose_distance": f.pose_distance,
                    "copy_paste": f.copy_paste,
                }
                for f in self.faces
            ],
        }


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def format_infotext(result: LikenessResult) -> str:
    """The infotext value: ``"0.63 (strong, antelopev2)"``, ``"…, copy-paste)"`` or ``"no face"``."""
    best = result.best
    if best is None:
        return "no face"
    flags = ", copy-paste" if best.copy_paste else ""
    return f"{best.similarity:.2f} ({best.band}, {result.pack}{flags})"


def format_summary(result: LikenessResult) -> str:
    """One line for the UI, saying what the number means and how much to trust it."""
    best = result.best
    if best is None:
        return f"Likeness: {NO_FACE}, so the identity could not be checked."
    text = f"Likeness {best.similarity:.2f} ({best.band}): {_MEANING[best.band]}"
    if len(result.faces) > 1:
        text += f" (best of {len(result.faces)} faces)"
    if result.independent:
        text += f". Scored with {result.recognizer}, independent of the encoder that made the image."
    else:
        why = f"; {result.note}" if result.note else ""
        text += f". Scored with {result.recognizer}, the conditioning encoder, which flatters it{why}."
    if best.copy_paste:
        text += (
            " The face and pose copy the reference photo: use a pose image or lower the "
            "IdentityNet or adapter strength for a new picture of the person."
        )
    return text


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def _reference_faces(faces: Sequence[Face]) -> tuple[ReferenceFace, ...]:
    return tuple(ReferenceFace(_frozen(f.embedding, (EMBEDDING_DIM,)), _frozen(f.kps, (5, 2))) for f in faces)


class LikenessScorer:
    """Scores output images against a reference, preferring a recognizer independent of the
    conditioning.

    ``analyzer`` is the antelopev2 analyzer that conditioned the generation; ``independent``
    an analyzer for a second pack (``buffalo_l``), or None; ``unavailable`` then says why there
    is none, in a few words for the results' note (:meth:`from_roots` fills it in).
    """

    def __init__(
        self,
        analyzer: FaceAnalyzer,
        independent: FaceAnalyzer | None = None,
        *,
        unavailable: str = "no second recognizer was given",
    ) -> None:
        self.analyzer = analyzer
        self.independent = independent
        self.unavailable = "" if independent is not None else unavailable

    def __repr__(self) -> str:
        return f"LikenessScorer(analyzer={self.analyzer!r}, independent={self.independent!r})"

    @classmethod
    def from_roots(
        cls,
        roots: Iterable[RootLike | None],
        providers: ProvidersLike = "cpu",
        *,
        use_independent: bool = True,
    ) -> LikenessScorer:
        """The scorer for the insightface roots the extension searches (first usable pack each).

        antelopev2 is required (:class:`ModelFileError` otherwise, as for a generation);
        ``buffalo_l`` is used when present and ``use_independent`` is True.
        """
        roots = list(roots)
        analyzer = FaceAnalyzer(find_root(roots), providers=providers)
        if not use_independent:
            return cls(analyzer, unavailable="the second recognizer is turned off")
        root, problem = find_optional_pack(roots, BUFFALO_L)
        if root is None:
            reason = "is installed but not usable" if problem else "is not installed"
            return cls(analyzer, unavailable=f"{BUFFALO_L.name} {reason}")
        return cls(analyzer, FaceAnalyzer(root, providers=providers, pack=BUFFALO_L))

    def reference(
        self,
        embedding: np.ndarray,
        images: Sequence[ImageLike] = (),
        *,
        weights: Sequence[float] | None = None,
        face_choice: ChoiceMode = "largest",
        face_index: int = 0,
        kps: np.ndarray | None = None,
        channel_order: ChannelOrder = "rgb",
    ) -> LikenessReference:
        """The reference to score outputs against; build it once per generation.

        ``embedding`` is the mean raw embedding InstantID conditioned on. ``images``, the
        reference photos it came from (empty for a saved identity), with the generation's
        ``weights``, ``face_choice`` and ``face_index``: the second recognizer re-embeds them
        the same way, and their keypoints feed the copy-paste hint. ``kps`` gives a saved
        identity's reference keypoints for that hint (ignored when ``images`` are given).
        If the second recognizer fails on the photos (no face found by its detector, a broken
        file), the conditioning encoder scores and the note says why.
        """
        base = _frozen(_vector(embedding, "reference embedding"), (EMBEDDING_DIM,))
        images = list(images)
        many = len(images) > 1
        labels = [f"reference image {i + 1}" if many else "the reference image" for i in range(len(images))]

        def analyse(analyzer: FaceAnalyzer) -> list[Face]:
            # As the generation chose: the face choice picks the first photo's face, further
            # photos of the same person give their largest face.
            return [
                analyzer.analyze_one(
                    image,
                    face_choice if i == 0 else "largest",
                    face_index if i == 0 else 0,
                    label=label,
                    channel_order=channel_order,
                )
                for i, (image, label) in enumerate(zip(images, labels, strict=True))
            ]

        if self.independent is None:
            note = self.unavailable
        elif not images:
            note = f"a saved identity has no photos to re-embed with {self.independent.pack.name}"
        else:
            name = self.independent.pack.name
            try:
                faces = analyse(self.independent)
            except InstantIDError as err:
                logger.warning("Likeness: %s cannot embed the reference photos (%s)", name, err)
                note = f"{name} could not embed the reference photos"
            else:
                return LikenessReference(
                    embedding=_frozen(mean_embedding(faces, weights), (EMBEDDING_DIM,)),
                    pack=self.independent.pack,
                    independent=True,
                    faces=_reference_faces(faces),
                )
        if images:
            references = _reference_faces(analyse(self.analyzer))
        elif kps is not None:
            normalized_kps(kps)  # refuse unusable keypoints now, not on every output
            references = (ReferenceFace(base, _frozen(kps, (5, 2))),)
        else:
            references = ()
        return LikenessReference(base, self.analyzer.pack, independent=False, faces=references, note=note)

    def _analyzer_for(self, reference: LikenessReference) -> FaceAnalyzer:
        if not reference.independent:
            return self.analyzer
        if self.independent is None or self.independent.pack != reference.pack:
            msg = (
                f"This likeness reference was made with {reference.recognizer}, which this scorer does "
                "not have; make the reference with the scorer that scores the outputs."
            )
            raise InvalidInputError(msg)
        return self.independent

    def score(
        self,
        image: ImageLike,
        reference: LikenessReference,
        *,
        channel_order: ChannelOrder = "rgb",
        label: str = "the output",
    ) -> LikenessResult:
        """Detect every face in ``image`` and score it against ``reference`` (same recognizer)."""
        analyzer = self._analyzer_for(reference)
        faces = analyzer.analyze(image, channel_order, label=label)
        return LikenessResult(
            faces=tuple(_score_face(face, reference) for face in faces),
            recognizer=reference.recognizer,
            pack=reference.pack.name,
            independent=reference.independent,
            note=reference.note,
        )


def _score_face(face: Face, reference: LikenessReference) -> ScoredFace:
    similarity = cosine_similarity(face.embedding, reference.embedding)
    distances: list[float] = []
    copy_paste = False
    for ref in reference.faces:
        if ref.kps is None:
            continue
        distance = pose_distance(face.kps, ref.kps)
        distances.append(distance)
        if (
            distance <= COPY_PASTE_MAX_POSE_DISTANCE
            and cosine_similarity(face.embedding, ref.embedding) >= COPY_PASTE_MIN_SIMILARITY
        ):
            copy_paste = True
    return ScoredFace(
        bbox=_frozen(face.bbox, (4,)),
        kps=_frozen(face.kps, (5, 2)),
        det_score=float(face.score),
        similarity=similarity,
        pose_distance=min(distances) if distances else None,
        copy_paste=copy_paste,
    )
