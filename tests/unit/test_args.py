"""InstantIDArgs: one schema for the UI's positional values, API dicts, JSON and infotext."""

from __future__ import annotations

import base64
import io
import json
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from instantid_ext.args import ALIASES, ARG_FIELDS, InstantIDArgs, infotext_labels, is_enabled
from instantid_ext.errors import InvalidInputError
from instantid_ext.images import decode_image, encode_image_png_base64

# --- helpers ------------------------------------------------------------------------------


def rgb(width: int = 8, height: int = 6, seed: int = 0) -> Image.Image:
    data = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(data, "RGB")


def encoded(img: Image.Image, fmt: str = "PNG", **save: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def b64(img: Image.Image, fmt: str = "PNG", **save: Any) -> str:
    return base64.b64encode(encoded(img, fmt, **save)).decode()


def error_of(value: object) -> str:
    with pytest.raises(InvalidInputError) as info:
        InstantIDArgs.parse(value)
    return str(info.value)


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


FACE = rgb(seed=1)
FACE_B64 = b64(FACE)


# --- layout and defaults ------------------------------------------------------------------


def test_field_order_is_the_ui_order() -> None:
    assert ARG_FIELDS == (
        "enabled",
        "images",
        "image_weights",
        "identity",
        "face_choice",
        "face_index",
        "pose_source",
        "pose_image",
        "id_weight",
        "id_start",
        "id_end",
        "control_weight",
        "control_start",
        "control_end",
        "ip_adapter_model",
        "identitynet_model",
        "resize_mode",
        "face_region_only",
        # Appended later: positional API calls written for the fields above keep working.
        "pose_face_choice",
        "pose_face_index",
        "show_hint",
        "pose_preset",
        "pose_mirror",
        "pose_rotate",
        "pose_scale",
        "pose_offset_x",
        "pose_offset_y",
        "noise",
        "likeness",
        "face_pass",
        "face_pass_faces",
        "face_pass_index",
        "face_pass_strength",
        "face_pass_prompt",
        "face_pass_padding",
        "face_pass_resolution",
        "people",
    )


def test_defaults_are_off_and_match_the_reference_pipeline() -> None:
    args = InstantIDArgs()
    assert args.enabled is False
    assert args.images == []
    assert args.image_weights == []
    assert args.identity == ""
    assert (args.face_choice, args.face_index) == ("largest", 0)
    # "auto": the reference's keypoints in txt2img, the init image's face in img2img.
    assert (args.pose_source, args.pose_image) == ("auto", None)
    assert (args.pose_face_choice, args.pose_face_index) == ("largest", 0)
    assert args.show_hint is False
    assert (args.id_weight, args.id_start, args.id_end) == (0.8, 0.0, 1.0)
    assert (args.control_weight, args.control_start, args.control_end) == (0.8, 0.0, 1.0)
    assert (args.ip_adapter_model, args.identitynet_model) == ("Auto", "Auto")
    assert args.resize_mode == "Crop and Resize"
    assert args.face_region_only is False


def test_mutable_defaults_are_not_shared() -> None:
    a, b = InstantIDArgs(), InstantIDArgs()
    a.images.append(FACE)
    assert b.images == []


@pytest.mark.parametrize("empty", [None, {}, "", "  ", (), [], b"", {"args": []}])
def test_empty_input_means_defaults(empty: object) -> None:
    assert InstantIDArgs.parse(empty) == InstantIDArgs()


# --- the forms parse() accepts ------------------------------------------------------------


def test_parse_dict() -> None:
    data = {"enabled": True, "images": [FACE_B64], "id_weight": 1.1, "face_choice": "index"}
    args = InstantIDArgs.parse(data)
    assert args.enabled is True
    assert len(args.images) == 1
    assert same_pixels(args.images[0], FACE)
    assert args.id_weight == 1.1
    assert args.face_choice == "index"


def test_parse_json_string() -> None:
    text = json.dumps({"enabled": True, "identity": "alice", "control_weight": 0.5})
    args = InstantIDArgs.parse(text)
    assert (args.enabled, args.identity, args.control_weight) == (True, "alice", 0.5)


def test_parse_json_list_is_positional() -> None:
    args = InstantIDArgs.parse(json.dumps([True, [], [], "alice"]))
    assert (args.enabled, args.identity) == (True, "alice")


def test_parse_returns_a_model_unchanged() -> None:
    args = InstantIDArgs(identity="bob")
    assert InstantIDArgs.parse(args) is args
    assert InstantIDArgs.parse((args,)) is args


def test_parse_full_positional_tuple() -> None:
    values = (
        True,
        [FACE],
        [1.0],
        "",
        "index",
        2,
        "pose_image",
        rgb(seed=3),
        1.2,
        0.1,
        0.9,
        0.6,
        0.2,
        0.8,
        "ip-adapter.bin",
        "ControlNetModel",
        "Just Resize",
        True,
    )
    args = InstantIDArgs.parse(values)
    assert tuple(getattr(args, name) is not None for name in ARG_FIELDS) == (True,) * len(ARG_FIELDS)
    assert args.face_index == 2
    assert (args.id_weight, args.id_start, args.id_end) == (1.2, 0.1, 0.9)
    assert (args.control_weight, args.control_start, args.control_end) == (0.6, 0.2, 0.8)
    assert (args.ip_adapter_model, args.identitynet_model) == ("ip-adapter.bin", "ControlNetModel")
    assert args.resize_mode == "Just Resize"
    assert args.face_region_only is True


def test_short_positional_tuple_keeps_defaults() -> None:
    args = InstantIDArgs.parse((False, [], [], "alice"))
    assert args.identity == "alice"
    assert args.id_weight == 0.8
    assert args.resize_mode == "Crop and Resize"


def test_long_positional_tuple_is_an_error() -> None:
    msg = error_of((False,) * (len(ARG_FIELDS) + 1))
    assert f"at most {len(ARG_FIELDS)} positional arguments" in msg
    assert "enabled, images" in msg


def test_api_form_single_dict_tuple() -> None:
    args = InstantIDArgs.parse(({"enabled": True, "images": [FACE_B64]},))
    assert args.enabled is True
    assert len(args.images) == 1


def test_api_form_padded_with_ui_defaults() -> None:
    """A1111 puts the API's one dict in slot 0 and fills the other slots with UI defaults."""
    padded = ({"enabled": True, "identity": "alice", "id_weight": 1.5}, [], [], "", "largest", 0)
    args = InstantIDArgs.parse(padded)
    assert (args.enabled, args.identity, args.id_weight) == (True, "alice", 1.5)


def test_api_form_as_json_in_the_first_slot() -> None:
    args = InstantIDArgs.parse(['{"enabled": true, "identity": "alice"}', None, None])
    assert (args.enabled, args.identity) == (True, "alice")


def test_whole_alwayson_payload() -> None:
    args = InstantIDArgs.parse({"args": [{"identity": "alice"}]})
    assert args.identity == "alice"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("42", "must be a JSON object"),
        (3.5, "must be a dict, a JSON object or a list"),
    ],
)
def test_unreadable_containers(value: object, fragment: str) -> None:
    assert fragment in error_of(value)


def test_gradio_none_values_mean_defaults() -> None:
    values = (None, None, None, None, None, None, None, None, None, None, None, None)
    assert InstantIDArgs.parse(values) == InstantIDArgs()


def test_slider_floats_become_ints() -> None:
    assert InstantIDArgs.parse({"face_index": 3.0}).face_index == 3
    assert InstantIDArgs.parse({"face_index": "4"}).face_index == 4
    assert InstantIDArgs.parse({"face_index": "5.0"}).face_index == 5


def test_numbers_from_strings() -> None:
    data = {"id_weight": "1.25", "enabled": "true", "face_region_only": 1, "identity": "a"}
    args = InstantIDArgs.parse(data)
    assert (args.id_weight, args.enabled, args.face_region_only) == (1.25, True, True)


def test_model_json_round_trips_through_parse() -> None:
    args = InstantIDArgs(enabled=True, images=[FACE], pose_source="pose_image", pose_image=rgb(seed=5))
    again = InstantIDArgs.parse(args.json())
    assert again == args


# --- validation messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"id_weight": 3.5}, "id_weight", "must be between 0 and 2 (got 3.5)"),
        ({"id_weight": -0.1}, "id_weight", "must be between 0 and 2 (got -0.1)"),
        ({"control_weight": 2.5}, "control_weight", "between 0 and 2"),
        ({"id_start": 1.5}, "id_start", "between 0 and 1"),
        ({"id_end": -1}, "id_end", "between 0 and 1"),
        ({"control_start": 2}, "control_start", "between 0 and 1"),
        ({"control_end": 7}, "control_end", "between 0 and 1 (got 7)"),
        ({"id_weight": float("nan")}, "id_weight", "between 0 and 2"),
        ({"id_weight": "strong"}, "id_weight", "must be a number (got 'strong')"),
        ({"face_index": 32}, "face_index", "between 0 and 31 (got 32)"),
        ({"face_index": -1}, "face_index", "between 0 and 31"),
        ({"face_index": 2.5}, "face_index", "whole number"),
        ({"face_index": "two"}, "face_index", "whole number (got 'two')"),
        ({"face_choice": "biggest"}, "face_choice", "'largest', 'index', 'highest_score' (got 'biggest')"),
        (
            {"pose_source": "camera"},
            "pose_source",
            "'auto', 'reference', 'pose_image', 'init_image', 'preset', 'none' (got 'camera')",
        ),
        ({"resize_mode": "stretch"}, "resize_mode", "'Crop and Resize', 'Resize and Fill', 'Just Resize'"),
        ({"resize_mode": 7}, "resize_mode", "(got 7)"),
        ({"enabled": "maybe"}, "enabled", "true or false (got 'maybe')"),
        ({"face_region_only": "perhaps"}, "face_region_only", "true or false"),
        ({"identity": "../secret"}, "identity", "not a valid identity name"),
        ({"identity": "a/b"}, "identity", "not a valid identity name"),
        ({"identity": "x" * 65}, "identity", "not a valid identity name"),
        ({"identity": ["alice"]}, "identity", "must be text"),
        ({"ip_adapter_model": "a\nb"}, "ip_adapter_model", "printable characters"),
        ({"identitynet_model": "x" * 300}, "identitynet_model", "at most 255"),
        ({"image_weights": [-1.0]}, "image_weights", "0 or more (got -1.0)"),
        ({"image_weights": [1.0, math.inf]}, "image_weights", "0 or more"),
        ({"image_weights": [0, 0]}, "image_weights", "must not all be 0"),
        ({"image_weights": "1, heavy"}, "image_weights[1]", "must be a number"),
        ({"images": 42}, "images[0]", "Cannot read an image"),
    ],
)
def test_each_error_names_its_field(data: dict[str, Any], field: str, fragment: str) -> None:
    msg = error_of(data)
    assert f"InstantID argument '{field}'" in msg
    assert fragment in msg


def test_several_errors_are_reported_together() -> None:
    msg = error_of({"id_weight": 9, "face_choice": "x", "id_end": 4})
    for field in ("id_weight", "face_choice", "id_end"):
        assert f"'{field}'" in msg
    assert msg.count(".") >= 3


def test_unknown_key_lists_the_valid_names() -> None:
    msg = error_of({"foo": 1})
    assert "Unknown InstantID argument 'foo'" in msg
    assert "Valid arguments: " + ", ".join(ARG_FIELDS) in msg


def test_unknown_key_on_assignment() -> None:
    args = InstantIDArgs()
    with pytest.raises(InvalidInputError, match="Unknown InstantID argument 'strength'"):
        args.strength = 1  # type: ignore[attr-defined]


def test_enabled_without_a_face() -> None:
    msg = error_of({"enabled": True})
    want = "InstantID is enabled but has no reference face: add a face photo or choose a saved identity"
    assert want in msg


def test_a_saved_identity_is_a_face() -> None:
    assert InstantIDArgs.parse({"enabled": True, "identity": "alice"}).identity == "alice"


def test_pose_image_required_for_pose_source_pose_image() -> None:
    msg = error_of({"enabled": True, "images": [FACE], "pose_source": "pose_image"})
    assert "'pose_image'" in msg
    args = InstantIDArgs.parse(
        {"enabled": True, "images": [FACE], "pose_source": "pose_image", "pose_image": b64(rgb(seed=4))}
    )
    assert args.pose_image is not None
    assert same_pixels(args.pose_image, rgb(seed=4))


@pytest.mark.parametrize(("start", "end"), [("id_start", "id_end"), ("control_start", "control_end")])
def test_start_after_end(start: str, end: str) -> None:
    msg = error_of({"enabled": True, "identity": "a", start: 0.9, end: 0.2})
    assert f"'{start}' (0.9) must not be greater than '{end}' (0.2)" in msg


def test_weights_must_match_the_images() -> None:
    msg = error_of({"enabled": True, "images": [FACE, FACE], "image_weights": [1.0]})
    assert "'image_weights'" in msg
    assert "1 weight(s) for 2 image(s)" in msg


def test_cross_field_checks_wait_until_enabled() -> None:
    """A switched-off unit with half-edited controls must not block a generation."""
    data = {
        "pose_source": "pose_image",
        "id_start": 0.9,
        "id_end": 0.1,
        "images": [FACE],
        "image_weights": "1 2",
    }
    args = InstantIDArgs.parse(data)
    assert args.enabled is False


def test_errors_are_input_errors_on_construction_and_assignment() -> None:
    with pytest.raises(InvalidInputError, match="'id_weight'"):
        InstantIDArgs(id_weight=5)
    args = InstantIDArgs()
    with pytest.raises(InvalidInputError, match="'control_end': must be between 0 and 1"):
        args.control_end = 1.5
    assert args.control_end == 1.0
    with pytest.raises(InvalidInputError, match="no reference face"):
        args.enabled = True


# --- aliases and spellings ----------------------------------------------------------------


@pytest.mark.parametrize(("alias", "field"), sorted(ALIASES.items()))
def test_aliases(alias: str, field: str) -> None:
    value: object = FACE_B64 if field == "images" else 1.3
    args = InstantIDArgs.parse({alias: value})
    if field == "images":
        assert len(args.images) == 1
    else:
        assert getattr(args, field) == 1.3


def test_documented_aliases() -> None:
    assert ALIASES == {
        "image": "images",
        "weight": "id_weight",
        "ip_weight": "id_weight",
        "ip_adapter_scale": "id_weight",
        "controlnet_conditioning_scale": "control_weight",
        "identitynet_weight": "control_weight",
    }


def test_alias_and_field_together_is_an_error() -> None:
    msg = error_of({"ip_adapter_scale": 1.0, "id_weight": 0.5})
    assert "'id_weight' is given twice" in msg
    assert "'ip_adapter_scale'" in msg


def test_alias_on_assignment_and_none_resets() -> None:
    args = InstantIDArgs()
    args.ip_adapter_scale = 1.5  # type: ignore[attr-defined]
    assert args.id_weight == 1.5
    args.id_weight = None  # type: ignore[assignment]
    assert args.id_weight == 0.8


@pytest.mark.parametrize(
    ("field", "given", "stored"),
    [
        ("face_choice", "Highest score", "highest_score"),
        ("face_choice", " INDEX ", "index"),
        ("pose_source", "pose image", "pose_image"),
        ("pose_source", "Pose-Image", "pose_image"),
        ("pose_source", "None", "none"),
        ("resize_mode", "just resize", "Just Resize"),
        ("resize_mode", 2, "Resize and Fill"),
        ("resize_mode", "INNER_FIT", "Crop and Resize"),
        ("identity", " alice ", "alice"),
        ("identity", "alice.safetensors", "alice"),
        ("identity", "None", ""),
        ("identity", "Mary-Jane_2.v1", "Mary-Jane_2.v1"),
        ("ip_adapter_model", "", "Auto"),
        ("ip_adapter_model", "auto", "Auto"),
        ("identitynet_model", " sub/ControlNetModel ", "sub/ControlNetModel"),
        ("image_weights", "1, 0.5", [1.0, 0.5]),
        ("image_weights", "2;3 4", [2.0, 3.0, 4.0]),
        ("image_weights", 0.7, [0.7]),
        ("image_weights", "", []),
    ],
)
def test_liberal_spellings(field: str, given: object, stored: object) -> None:
    assert getattr(InstantIDArgs.parse({field: given}), field) == stored


# --- images -------------------------------------------------------------------------------


def test_decode_pil_rgb_is_kept() -> None:
    img = rgb()
    assert decode_image(img) is img


def test_decode_pil_rgba_composites_over_black() -> None:
    rgba = Image.new("RGBA", (4, 4), (200, 100, 50, 0))
    out = decode_image(rgba)
    assert out.mode == "RGB"
    assert np.asarray(out).max() == 0


def test_decode_pil_grayscale() -> None:
    out = decode_image(Image.new("L", (5, 3), 77))
    assert out.mode == "RGB"
    assert out.size == (5, 3)
    assert np.all(np.asarray(out) == 77)


@pytest.mark.parametrize("shape", [(6, 8), (6, 8, 3), (6, 8, 4), (6, 8, 1)])
def test_decode_numpy(shape: tuple[int, ...]) -> None:
    arr = np.full(shape, 120, np.uint8)
    if shape[-1] == 4:
        arr[..., 3] = 255  # opaque
    out = decode_image(arr)
    assert (out.mode, out.size) == ("RGB", (8, 6))
    assert np.all(np.asarray(out) == 120)


def test_decode_float_array() -> None:
    out = decode_image(np.ones((2, 3, 3), np.float32))
    assert np.all(np.asarray(out) == 255)


@pytest.mark.parametrize(("fmt", "save"), [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {})])
def test_decode_base64_lossless(fmt: str, save: dict[str, Any]) -> None:
    img = rgb(seed=7)
    out = decode_image(b64(img, fmt, **save))
    assert type(out) is Image.Image  # a plain image, not a decoder holding the buffer
    assert same_pixels(out, img)


def test_decode_base64_jpeg() -> None:
    img = Image.new("RGB", (16, 16), (10, 200, 30))
    out = decode_image(b64(img, "JPEG"))
    assert out.size == (16, 16)
    assert np.abs(np.asarray(out).astype(int) - (10, 200, 30)).max() < 8


def test_decode_base64_with_whitespace_and_no_padding() -> None:
    text = FACE_B64.rstrip("=")
    wrapped = "\n".join(text[i : i + 60] for i in range(0, len(text), 60))
    assert same_pixels(decode_image(wrapped), FACE)


def test_decode_urlsafe_base64() -> None:
    text = base64.urlsafe_b64encode(encoded(FACE)).decode()
    assert same_pixels(decode_image(text), FACE)


@pytest.mark.parametrize("mime", ["image/png", "image/jpeg", "image/x-anything"])
def test_decode_data_url(mime: str) -> None:
    assert same_pixels(decode_image(f"data:{mime};base64,{FACE_B64}"), FACE)


def test_decode_bytes() -> None:
    assert same_pixels(decode_image(encoded(FACE)), FACE)
    assert same_pixels(decode_image(bytearray(encoded(FACE))), FACE)


def test_files_on_the_server_are_never_read(tmp_path: Path) -> None:
    """Paths, gradio's file dicts and file objects name a file on the server: an API caller could
    name any file, the upload folder included. The panel hands uploads over as bytes."""
    path = tmp_path / "face.png"
    FACE.save(path)
    extless = tmp_path / "upload"
    extless.write_bytes(encoded(FACE))
    values = (
        str(path),
        path,
        str(extless),
        {"name": str(path), "data": None, "is_file": True},
        {"path": str(path), "url": "http://127.0.0.1:7860/file=x", "orig_name": "face.png"},
        {"image": {"path": str(path)}, "caption": None},
        SimpleNamespace(name=str(path)),  # gr.File's tempfile wrapper
        [str(path), "caption"],
    )
    for value in values:
        with pytest.raises(InvalidInputError, match="Image files on the server are not read"):
            decode_image(value)


def test_decode_gradio_image_and_mask_dict() -> None:
    mask = np.zeros((6, 8, 4), np.uint8)
    assert same_pixels(decode_image({"image": np.asarray(FACE), "mask": mask}), FACE)
    assert same_pixels(decode_image({"image": FACE_B64, "mask": None}), FACE)


def test_decode_gradio_inline_values() -> None:
    gradio3_inline = {"name": "face.png", "data": f"data:image/png;base64,{FACE_B64}", "is_file": False}
    gallery = {"image": {"data": FACE_B64}, "caption": None}
    for value in (gradio3_inline, gallery):
        assert same_pixels(decode_image(value), FACE), value


def test_gallery_values() -> None:
    second = b64(rgb(seed=9))
    gallery3 = [{"name": "a.png", "data": FACE_B64, "is_file": False}, {"name": "b.png", "data": second}]
    pairs = [[FACE_B64, "caption"], (second, None)]
    dict_pairs = [[{"data": FACE_B64}, ""], [{"data": second}, None]]
    for gallery in (gallery3, pairs, dict_pairs):
        args = InstantIDArgs.parse({"images": gallery})
        assert len(args.images) == 2
        assert same_pixels(args.images[0], FACE)
        assert same_pixels(args.images[1], rgb(seed=9))


@pytest.mark.parametrize("single", [FACE, np.asarray(FACE), FACE_B64, {"image": FACE, "mask": None}])
def test_a_single_image_instead_of_a_list(single: object) -> None:
    for key in ("images", "image"):
        args = InstantIDArgs.parse({key: single})
        assert len(args.images) == 1
        assert same_pixels(args.images[0], FACE)


def test_images_keep_their_order() -> None:
    imgs = [rgb(seed=s) for s in range(3)]
    args = InstantIDArgs.parse({"images": [b64(imgs[0]), imgs[1], np.asarray(imgs[2])]})
    assert all(same_pixels(a, b) for a, b in zip(args.images, imgs, strict=True))


def test_exif_rotation_is_applied() -> None:
    img = Image.new("RGB", (8, 4), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(encoded(img, "JPEG", exif=exif))
    assert out.size == (4, 8)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("https://example.com/face.png", "not downloaded"),
        ("HTTP://example.com/face.png", "not downloaded"),
        ({"url": "https://example.com/face.png"}, "not downloaded"),
        ("data:text/plain;base64,aGVsbG8=", "not a base64 image"),
        ("aGVsbG8gd29ybGQ=", "not an image Pillow can read"),
        ("!!not base64!!", "neither base64 image data"),
        ("/nonexistent/missing/face.png", "files on the server are not read"),
        (str(Path(tempfile.gettempdir()) / "instantid-missing-face.png"), "files on the server are not read"),
        ("", "empty string"),
        ({"caption": "x"}, "no image in it"),
        ({"name": "/nonexistent/tmp123.png", "is_file": True}, "files on the server are not read"),
        (np.zeros((2, 2, 2), np.uint8), "H×W"),
        (12, "Cannot read an image"),
        (None, "must not be empty"),
    ],
)
def test_undecodable_images_name_their_index(value: object, fragment: str) -> None:
    msg = error_of({"images": [FACE_B64, value]})
    assert "InstantID argument 'images[1]'" in msg
    assert "images[0]" not in msg
    assert fragment in msg


def test_undecodable_pose_image_names_it() -> None:
    msg = error_of({"pose_image": "https://example.com/pose.jpg"})
    assert "InstantID argument 'pose_image'" in msg


def test_error_messages_never_echo_base64() -> None:
    junk = base64.b64encode(b"\x00" * 3000).decode()
    msg = error_of({"images": [junk], "pose_image": "x" * 5000 + "!"})
    assert junk[:40] not in msg
    assert "xxxxxxxxxx" not in msg
    assert len(msg) < 600


def test_encode_png_base64_round_trip() -> None:
    text = encode_image_png_base64(FACE)
    assert base64.b64decode(text)[:8] == b"\x89PNG\r\n\x1a\n"
    assert same_pixels(decode_image(text), FACE)
    assert same_pixels(decode_image(encode_image_png_base64(np.asarray(FACE))), FACE)
    cmyk = FACE.convert("CMYK")
    assert decode_image(encode_image_png_base64(cmyk)).size == FACE.size


def test_repr_and_summary_never_contain_image_data() -> None:
    args = InstantIDArgs.parse(
        {
            "enabled": True,
            "images": [FACE_B64, f"data:image/png;base64,{FACE_B64}"],
            "image_weights": [2, 1],
            "pose_source": "pose_image",
            "pose_image": FACE_B64,
        }
    )
    for text in (repr(args), str(args), args.summary()):
        assert FACE_B64[:24] not in text
        assert "base64" not in text
        assert len(text) < 1200
    assert "<image 8×6>" in repr(args)
    assert "2 image(s) [8×6, 8×6] weighted 2.0, 1.0" in args.summary()
    assert "\n" not in args.summary()


def test_summary_when_off_and_with_identity() -> None:
    assert InstantIDArgs().summary() == "InstantID off"
    line = InstantIDArgs(enabled=True, identity="alice", images=[FACE]).summary()
    assert "identity 'alice' (ignoring 1 image(s))" in line


# --- is_enabled ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ((), False),
        ((True, ["not decoded"]), True),
        ((False, ["not decoded"]), False),
        (({"enabled": True, "images": ["not decoded"]}, None), True),
        ({"enabled": "false"}, False),
        ({"enabled": "on"}, True),
        ('{"enabled": true}', True),
        ((None,), False),
        (InstantIDArgs(), False),
    ],
)
def test_is_enabled_reads_only_the_flag(value: object, expected: bool) -> None:
    assert is_enabled(value) is expected


# --- infotext -----------------------------------------------------------------------------


def test_no_infotext_when_off() -> None:
    assert InstantIDArgs(identity="alice").to_infotext({"hash": "abc"}) == {}


def test_infotext_of_defaults_is_short() -> None:
    args = InstantIDArgs(enabled=True, images=[FACE])
    want = {"InstantID": "on", "InstantID adapter": "Auto", "InstantID IdentityNet": "Auto"}
    assert args.to_infotext() == want


def test_infotext_writes_non_defaults_and_extras() -> None:
    args = InstantIDArgs(
        enabled=True,
        identity="alice",
        id_weight=0.35000000000000003,
        id_end=0.9,
        control_start=0.1,
        face_choice="index",
        face_index=2,
        pose_source="none",
        resize_mode="Resize and Fill",
        face_region_only=True,
        ip_adapter_model="ip-adapter.bin",
    )
    info = args.to_infotext({"adapter hash": "1234abcd", "InstantID reference hash": "ffee"})
    assert info == {
        "InstantID": "on",
        "InstantID identity": "alice",
        "InstantID face choice": "index",
        "InstantID face index": "2",
        "InstantID pose": "none",
        "InstantID ID weight": "0.35",
        "InstantID ID range": "0.0-0.9",
        "InstantID IdentityNet range": "0.1-1.0",
        "InstantID adapter": "ip-adapter.bin",
        "InstantID IdentityNet": "Auto",
        "InstantID resize mode": "Resize and Fill",
        "InstantID face region only": "True",
        "InstantID adapter hash": "1234abcd",
        "InstantID reference hash": "ffee",
    }


def test_from_infotext_reads_only_present_keys() -> None:
    assert InstantIDArgs.from_infotext({"Steps": "20", "Sampler": "Euler"}) == {}
    assert InstantIDArgs.from_infotext({"InstantID": "on"}) == {"enabled": True}


def test_from_infotext_skips_bad_values() -> None:
    params = {
        "InstantID": "on",
        "InstantID ID weight": "9",
        "InstantID ID range": "0.8-0.2",
        "InstantID IdentityNet range": "half",
        "InstantID IdentityNet weight": "0.5",
        "InstantID face choice": "biggest",
        "InstantID face index": "1.5",
        "InstantID identity": "../x",
        "InstantID image weights": "0, 0",
        "InstantID resize mode": "Just Resize",
        "InstantID pose": "pose image",
    }
    assert InstantIDArgs.from_infotext(params) == {
        "enabled": True,
        "control_weight": 0.5,
        "resize_mode": "Just Resize",
        "pose_source": "pose_image",
    }


def test_from_infotext_ranges_with_exponents() -> None:
    params = {"InstantID ID range": "1e-05-0.5", "InstantID IdentityNet range": "0-1"}
    updates = InstantIDArgs.from_infotext(params)
    assert updates == {"id_start": 1e-05, "id_end": 0.5, "control_start": 0.0, "control_end": 1.0}


def test_infotext_labels_cover_every_non_image_field() -> None:
    labels = infotext_labels()
    assert set(labels) == set(ARG_FIELDS) - {"images", "pose_image", "show_hint", "likeness", "people"}
    assert all(key == "InstantID" or key.startswith("InstantID ") for key in labels.values())
    assert labels["id_weight"] == "InstantID ID weight"
    assert labels["id_start"] == labels["id_end"] == "InstantID ID range"
    assert labels["control_weight"] == "InstantID IdentityNet weight"
    assert labels["control_start"] == labels["control_end"] == "InstantID IdentityNet range"
    assert labels["ip_adapter_model"] == "InstantID adapter"
    assert labels["identitynet_model"] == "InstantID IdentityNet"


_units = st.floats(0, 1, allow_nan=False)
_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 _.\-]{0,20}", fullmatch=True).filter(
    lambda n: ".." not in n and n.strip().lower() != "none" and not n.lower().endswith(".safetensors")
)
_model_names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
    max_size=40,
)
_weights = st.lists(st.floats(0, 10, allow_nan=False), max_size=4).filter(
    lambda ws: not ws or any(round(w, 6) for w in ws)
)


@st.composite
def _non_image_fields(draw: st.DrawFn) -> dict[str, Any]:
    id_range = sorted(draw(st.tuples(_units, _units)))
    control_range = sorted(draw(st.tuples(_units, _units)))
    return {
        "enabled": True,
        "image_weights": draw(_weights),
        "identity": draw(_names),
        "face_choice": draw(st.sampled_from(["largest", "index", "highest_score"])),
        "face_index": draw(st.integers(0, 31)),
        "pose_source": draw(st.sampled_from(["reference", "pose_image", "none"])),
        "id_weight": draw(st.floats(0, 2, allow_nan=False)),
        "id_start": id_range[0],
        "id_end": id_range[1],
        "control_weight": draw(st.floats(0, 2, allow_nan=False)),
        "control_start": control_range[0],
        "control_end": control_range[1],
        "ip_adapter_model": draw(_model_names),
        "identitynet_model": draw(_model_names),
        "resize_mode": draw(st.sampled_from(["Crop and Resize", "Resize and Fill", "Just Resize"])),
        "face_region_only": draw(st.booleans()),
    }


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


@settings(max_examples=300, deadline=None)
@given(_non_image_fields())
def test_infotext_round_trip(fields: dict[str, Any]) -> None:
    pose = rgb(seed=2)
    original = InstantIDArgs.parse({**fields, "pose_image": pose})
    info = original.to_infotext()
    assert all(isinstance(v, str) and "\n" not in v for v in info.values())
    restored = InstantIDArgs.parse({"pose_image": pose, **InstantIDArgs.from_infotext(info)})
    for name in fields:
        assert getattr(restored, name) == _rounded(getattr(original, name)), name
    assert restored.to_infotext() == info


# --- API schema ---------------------------------------------------------------------------


def test_schema_describes_the_api_form() -> None:
    schema = InstantIDArgs.schema_dict()
    json.dumps(schema)
    props = schema["properties"]
    assert list(props) == list(ARG_FIELDS)
    assert schema["additionalProperties"] is False
    assert props["images"]["items"] == {"type": "string", "format": "base64"}
    assert props["pose_image"]["type"] == "string"
    assert props["id_weight"]["minimum"] == 0
    assert props["id_weight"]["maximum"] == 2
    assert props["face_choice"]["enum"] == ["largest", "index", "highest_score"]
    assert props["enabled"]["default"] is False
    assert "alwayson_scripts" in schema["description"]
    assert "ip_adapter_scale → id_weight" in schema["description"]


def test_several_people_are_validated_person_by_person() -> None:
    args = InstantIDArgs.parse(
        {
            "enabled": True,
            "people": [
                {"identity": "ada", "region": "Left", "id_weight": 0.7},
                {"images": [FACE_B64], "image_weights": "1", "region": "box", "box": "0.5, 0.1, 0.9, 0.8"},
            ],
        }
    )
    assert [p.region for p in args.people] == ["left", "box"]
    assert args.people[1].box == [0.5, 0.1, 0.9, 0.8] and args.people[1].image_weights == [1.0]
    assert args.people[0].id_weight == 0.7 and args.people[1].control_weight == 0.8
    for people, message in (
        (
            [{"identity": "a"}],
            "InstantID argument 'people': give 2 to 4 people (got 1); for one person use images or identity.",
        ),
        (
            [{"identity": "a", "id_weight": 5}, {"identity": "b"}],
            "InstantID argument 'people[0].id_weight': must be at most 2 (got 5).",
        ),
        (
            [{"identity": "a"}, {"region": "box", "box": [0.5, 0, 0.2, 1]}],
            "InstantID argument 'people[1]': needs photos or a saved identity; needs a box of four fractions "
            "x1, y1, x2, y2 with 0 ≤ x1 < x2 ≤ 1 and 0 ≤ y1 < y2 ≤ 1.",
        ),
        (
            [{"identity": "a", "regoin": "left"}, {"identity": "b"}],
            "Unknown InstantID argument 'people[0].regoin'. A person takes: images, image_weights, identity, "
            "face_index, region, box, mask, region_face, id_weight, control_weight.",
        ),
        (
            [{"identity": "a", "region": "mask"}, {"identity": "b"}],
            "InstantID argument 'people[0]': has the region 'mask' but no mask image.",
        ),
    ):
        with pytest.raises(InvalidInputError) as info:
            InstantIDArgs.parse({"enabled": True, "people": people})
        assert str(info.value) == message


def test_oversized_images_are_refused_from_their_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pixel limit applies to every image argument before any pixel is decoded."""
    from instantid_ext import images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100 * 100)
    data = b64(Image.new("RGB", (101, 100)))
    loaded: list[object] = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(self) or real_load(self))
    with pytest.raises(
        InvalidInputError, match=r"The base64 data is too large \(101×100\): the limit is 0 megapixels"
    ):
        decode_image(data)
    assert loaded == []


def test_too_many_reference_photos_are_refused_before_decoding() -> None:
    from instantid_ext.images import MAX_REFERENCE_IMAGES

    with pytest.raises(InvalidInputError, match=f"takes at most {MAX_REFERENCE_IMAGES} photos, got 40"):
        InstantIDArgs.parse({"enabled": True, "images": ["not decoded"] * 40})


def test_the_people_line_reads_back_what_describe_writes() -> None:
    from instantid_ext.job.people import PersonConditioning, describe

    photo = Image.new("RGB", (64, 64))
    args = InstantIDArgs(
        people=[
            {"identity": "Ada L", "region": "left", "id_weight": 0.9},
            {"images": [photo], "region": "box", "box": [0.5, 0, 1, 1], "control_weight": 0.35},
            {"identity": "left", "region": "right"},
        ]
    )
    sources = ["identity:Ada L", "images:1a2b3c", "identity:left"]
    conditionings = [PersonConditioning(np.zeros(512, np.float32), None, None, s) for s in sources]
    params = {"InstantID": "on", "InstantID people": describe(args, conditionings)}
    assert InstantIDArgs.people_from_infotext(params) == [
        {"identity": "Ada L", "region": "left", "id_weight": 0.9, "control_weight": 0.8},
        {
            "identity": "",
            "region": "box",
            "box": [0.5, 0.0, 1.0, 1.0],
            "id_weight": 0.8,
            "control_weight": 0.35,
        },
        {"identity": "left", "region": "right", "id_weight": 0.8, "control_weight": 0.8},
    ]


def test_unreadable_people_are_empty_and_none_is_no_people() -> None:
    params = {"InstantID people": "1: identity:Ada left 9/0.8; 2: who knows; 3: images:ab top 0.5/0.5"}
    first, second, third = InstantIDArgs.people_from_infotext(params)
    assert first == {"identity": "Ada", "region": "left", "control_weight": 0.8}  # 9 is out of range
    assert second == {}
    assert third["region"] == "top"
    assert InstantIDArgs.people_from_infotext({"InstantID": "on"}) == []
