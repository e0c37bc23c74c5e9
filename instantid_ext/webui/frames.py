"""Where the WebUI puts the pixels it samples, read off a processing object ``p``.

IdentityNet's hint and the face mask must be drawn in the coordinates of the latent the
sampler works on. The WebUI decides those in ``p.init()`` (img2img resize, the "Only masked"
crop around the inpaint mask, the hires-fix target and its centred crop), so these functions
are called once that has run (from ``process_batch``) and describe each step as a
:class:`~instantid_ext.method.geometry.Frame`, with the same integer arithmetic as
``modules/processing.py`` (1.6–1.10).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..method.geometry import Frame
from ..method.keypoints import ResizeMode, ResizeModeLike

#: The WebUI's latent downscale factor (``opt_f``).
LATENT_SCALE = 8


def canvas_size(p: Any) -> tuple[int, int]:
    """``(width, height)`` of the first pass's canvas: the job size floored to the latent grid."""
    return int(p.width) // LATENT_SCALE * LATENT_SCALE, int(p.height) // LATENT_SCALE * LATENT_SCALE


def _on_canvas(frame: Frame, p: Any) -> Frame:
    """The same mapping onto the latent-aligned canvas (the VAE drops the right/bottom remainder)."""
    return Frame(frame.scale, frame.offset, canvas_size(p))


def layout_frame(p: Any, src_size: tuple[int, int], mode: ResizeModeLike) -> Frame:
    """A photo laid out on the output by ``mode`` (reference and pose photos)."""
    return _on_canvas(Frame.resize(src_size, (int(p.width), int(p.height)), mode), p)


def is_img2img(p: Any) -> bool:
    return getattr(p, "init_images", None) is not None


def canvas_is_final(p: Any) -> bool:
    """Whether the layout on the canvas is known before ``p.init``: txt2img without hires fix (its
    target size comes from ``p.init``), img2img without "Only masked" (its crop too)."""
    if is_img2img(p):
        return not getattr(p, "inpaint_full_res", False) or getattr(p, "image_mask", None) is None
    return not getattr(p, "enable_hr", False)


def init_image(p: Any) -> Image.Image | None:
    """The first img2img init image, or None for txt2img."""
    images = getattr(p, "init_images", None)
    return images[0] if images else None


def only_masked_box(p: Any) -> tuple[int, int, int, int] | None:
    """The crop of "Inpaint area: Only masked" as ``(x1, y1, x2, y2)``, once ``p.init`` chose it."""
    paste_to = getattr(p, "paste_to", None)
    if not getattr(p, "inpaint_full_res", False) or not paste_to:
        return None
    x, y, w, h = (int(v) for v in paste_to)
    return x, y, x + w, y + h


def init_frame(p: Any, init_size: tuple[int, int]) -> Frame:
    """Init-image pixels → the sampled canvas, after ``p.init``.

    "Only masked" crops the box around the mask and resizes it with "Resize and Fill" (the box
    already has the output's aspect ratio); otherwise the whole image goes through the job's
    resize mode (3, "latent upscale", has the geometry of "Just Resize").
    """
    box = only_masked_box(p)
    if box is not None:
        x1, y1, x2, y2 = box
        crop = Frame.crop(box)
        resize = Frame.resize((x2 - x1, y2 - y1), (int(p.width), int(p.height)), ResizeMode.RESIZE_AND_FILL)
        return _on_canvas(crop.then(resize), p)
    return _on_canvas(Frame.resize(init_size, (int(p.width), int(p.height)), int(p.resize_mode)), p)


def hires_frame(p: Any) -> Frame | None:
    """First-pass canvas → hires canvas for txt2img hires fix (after ``p.init``), else None.

    The first pass is upscaled to ``hr_upscale_to_x × hr_upscale_to_y`` and, when the hires
    size has another aspect ratio, its latent is cropped by ``truncate_x/y`` latent pixels,
    ``truncate // 2`` of them on the left/top (``StableDiffusionProcessingTxt2Img.sample``).
    """
    if not getattr(p, "enable_hr", False) or is_img2img(p):
        return None
    up_x, up_y = int(getattr(p, "hr_upscale_to_x", 0) or 0), int(getattr(p, "hr_upscale_to_y", 0) or 0)
    if up_x <= 0 or up_y <= 0:
        return None
    cut_x, cut_y = int(getattr(p, "truncate_x", 0) or 0), int(getattr(p, "truncate_y", 0) or 0)
    size = ((up_x // LATENT_SCALE - cut_x) * LATENT_SCALE, (up_y // LATENT_SCALE - cut_y) * LATENT_SCALE)
    upscale = Frame.resize(canvas_size(p), (up_x, up_y), ResizeMode.JUST_RESIZE)
    shift = (-(cut_x // 2) * LATENT_SCALE, -(cut_y // 2) * LATENT_SCALE)
    return Frame(upscale.scale, (upscale.offset[0] + shift[0], upscale.offset[1] + shift[1]), size)


def inpaint_mask(p: Any) -> np.ndarray | None:
    """The img2img inpaint mask at the init image's size (True = repainted), or None.

    Read as ``create_binary_mask`` does (the alpha channel of an RGBA mask that has one, else
    the luminance, thresholded at 128) and inverted for "Inpaint not masked".
    """
    mask = getattr(p, "image_mask", None)
    image = init_image(p)
    if mask is None or image is None:
        return None
    if not isinstance(mask, Image.Image):
        mask = Image.fromarray(np.asarray(mask))
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        gray = mask.split()[-1]
    else:
        gray = mask.convert("L")
    if getattr(p, "inpainting_mask_invert", 0):
        gray = ImageOps.invert(gray)
    if gray.size != image.size:
        gray = gray.resize(image.size, Image.NEAREST)
    return np.asarray(gray) > 128
