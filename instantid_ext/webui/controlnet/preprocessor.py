""" "InstantID keypoints" in ControlNet's own preprocessor list, for units a user sets up."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import DependencyError, InvalidInputError, NoFaceError
from ...method.keypoints import draw_kps
from .access import MODULE_NAMES, ControlNetAccess

logger = logging.getLogger(__name__)


FaceDetector = Callable[[np.ndarray], np.ndarray | None]


PREPROCESSOR_NAME = "instantid_keypoints"


PREPROCESSOR_LABEL = "InstantID keypoints"


PREPROCESSOR_TAG = "Instant-ID"


def keypoint_image(image: np.ndarray, detector: FaceDetector | None) -> np.ndarray:
    """The IdentityNet hint for ``image``: its largest face's keypoints drawn at its size.

    Used by "InstantID keypoints" when someone picks it in ControlNet's own panel; our
    own unit never goes through it (see :meth:`ControlNetBridge.inject_unit`). ``detector``
    takes an RGB uint8 image and returns the 5×2 keypoints of its largest face, or None.
    """
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        msg = f"InstantID keypoints needs an 8-bit image, got {array.dtype} of shape {array.shape}."
        raise InvalidInputError(msg)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    rgb = np.ascontiguousarray(array[..., :3])  # the /detect route may hand over RGBA
    if detector is None:
        msg = (
            "InstantID keypoints cannot detect faces: InstantID's face analysis is not set up "
            "(see the InstantID messages in the console)."
        )
        raise DependencyError(msg)
    kps = detector(rgb)
    if kps is None:
        msg = "InstantID keypoints found no face in the ControlNet input image; use a clear face photo."
        raise NoFaceError(msg)
    height, width = rgb.shape[:2]
    return np.array(draw_kps((width, height), kps), dtype=np.uint8)


def _keypoint_preprocessor_class(base: type, parameter: type) -> type:
    """A subclass of ControlNet's own ``Preprocessor`` (built at run time: it lives in CN).

    Deliberately **not** a dataclass: ``@dataclass`` would generate ``__eq__`` and drop the
    base's name-based ``__hash__``, breaking ControlNet's lru-cache and its
    ``unload_unused`` set. The face detector lives on the instance, which ControlNet's
    registry keeps for the life of the process.
    """

    class InstantIDKeypoints(base):  # type: ignore[misc, valid-type]
        instantid_owned = True

        def __init__(self, detector: FaceDetector | None) -> None:
            super().__init__(name=PREPROCESSOR_NAME)
            self._label = PREPROCESSOR_LABEL
            self.tags = [PREPROCESSOR_TAG]
            self.returns_image = True
            self.detector = detector
            # The keypoints are drawn at the input's own size; a resolution would do nothing.
            self.slider_resolution = parameter(
                label="Resolution", minimum=64, maximum=2048, value=512, step=8, visible=False
            )

        def __call__(
            self,
            input_image: np.ndarray,
            resolution: Any = None,
            slider_1: Any = None,
            slider_2: Any = None,
            slider_3: Any = None,
            input_mask: Any = None,
            **kwargs: Any,
        ) -> np.ndarray:
            # A plain ndarray, not ``Preprocessor.Result``: the latter only exists from 1.1.446.
            return keypoint_image(input_image, self.detector)

        def unload(self) -> bool:
            # ControlNet calls unload() on every preprocessor each run (1.1.446+); our
            # detector is not ControlNet's to move around.
            return False

    return InstantIDKeypoints


class KeypointPreprocessor(ControlNetAccess):
    """Registers the keypoint preprocessor with ControlNet."""

    def register_preprocessor(self, detector: FaceDetector | None) -> bool:
        """Add "InstantID keypoints" to ControlNet's preprocessors; True if it is there now.

        Idempotent (the WebUI re-runs registration on every UI reload while ControlNet's
        registry survives: the registered instance then gets the new ``detector``), and a
        no-op if the registry is missing.
        """
        sp = sys.modules.get(MODULE_NAMES["preprocessors"])
        if sp is None:
            return False
        with self._internals(f"register the '{PREPROCESSOR_LABEL}' preprocessor"):
            registry = sp.Preprocessor
            taken = [
                registry.all_processors.get(PREPROCESSOR_LABEL),
                registry.all_processors_by_name.get(PREPROCESSOR_NAME),
            ]
            if any(entry is not None for entry in taken):
                if all(getattr(entry, "instantid_owned", False) for entry in taken):
                    for entry in taken:
                        entry.detector = detector
                    return True
                logger.warning(
                    "Another extension already registered a ControlNet preprocessor named '%s'; "
                    "InstantID's is not added.",
                    PREPROCESSOR_LABEL,
                )
                return False
            cls = _keypoint_preprocessor_class(registry, sp.PreprocessorParameter)
            registry.add_supported_preprocessor(cls(detector))
        logger.info("Added the '%s' preprocessor to ControlNet", PREPROCESSOR_LABEL)
        return True
