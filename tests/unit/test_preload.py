"""preload.py, and the other files the WebUI reads without importing our package:
metadata.ini, javascript/instantid.js and style.css."""

from __future__ import annotations

import argparse
import configparser
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


preload_module = _load("instantid_preload", ROOT / "preload.py")


def parser() -> argparse.ArgumentParser:
    # Like the WebUI's parser: one of its own flags, then ours added by preload().
    p = argparse.ArgumentParser(prog="webui")
    p.add_argument("--models-dir", default=None)
    preload_module.preload(p)
    return p


# --- preload.py ------------------------------------------------------------------------------


def test_defaults() -> None:
    opts = parser().parse_args([])
    assert opts.instantid_models_dir is None
    assert opts.instantid_insightface_dir is None
    assert opts.instantid_providers == "cpu"
    assert opts.instantid_loglevel == "INFO"


def test_flags_parse(tmp_path: Path) -> None:
    opts = parser().parse_args(
        [
            "--instantid-models-dir",
            str(tmp_path / "iid"),
            "--instantid-insightface-dir=relative/insightface",
            "--instantid-providers",
            "CUDA, cpu,cuda",
            "--instantid-loglevel",
            "debug",
        ]
    )
    assert opts.instantid_models_dir == str(tmp_path / "iid")
    assert Path(opts.instantid_insightface_dir).is_absolute()
    assert opts.instantid_insightface_dir.endswith(str(Path("relative/insightface")))
    assert opts.instantid_providers == "cuda,cpu"
    assert opts.instantid_loglevel == "DEBUG"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("cpu", "cpu"),
        ("rocm,cpu", "rocm,cpu"),
        ("coreml", "coreml"),
        ("DmlExecutionProvider,cpu", "DmlExecutionProvider,cpu"),
        ("CUDAExecutionProvider", "CUDAExecutionProvider"),
    ],
)
def test_providers_accepted(value: str, expected: str) -> None:
    assert parser().parse_args(["--instantid-providers", value]).instantid_providers == expected


@pytest.mark.parametrize("value", ["gpu", "cuda,tensorrt", "", " , ", "Bad ExecutionProvider"])
def test_bad_provider_rejected(value: str, capsys) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--instantid-providers", value])
    assert "--instantid-providers" in capsys.readouterr().err


def test_bad_loglevel_rejected(capsys) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--instantid-loglevel", "VERBOSE"])
    assert "invalid choice" in capsys.readouterr().err


def test_empty_folder_rejected() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--instantid-models-dir", ""])


def test_unknown_webui_flags_untouched() -> None:
    # The WebUI parses everything at once; ours must not swallow or clash with its flags.
    opts, rest = parser().parse_known_args(["--models-dir", "m", "--xformers"])
    assert opts.models_dir == "m"
    assert rest == ["--xformers"]


def test_flags_carry_our_prefix() -> None:
    p = argparse.ArgumentParser()
    before = {a.dest for a in p._actions}
    preload_module.preload(p)
    added = {a.dest for a in p._actions} - before
    assert added == {
        "instantid_models_dir",
        "instantid_insightface_dir",
        "instantid_providers",
        "instantid_loglevel",
    }


def test_preload_is_import_light() -> None:
    code = (
        "import sys, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('p', {str(ROOT / 'preload.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "heavy = [n for n in ('modules', 'torch', 'numpy', 'gradio', 'instantid_ext') if n in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- metadata.ini, read the way AUTOMATIC1111 1.7-1.10 reads it ------------------------------


def read_metadata() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    assert config.read(ROOT / "metadata.ini", encoding="utf-8")
    return config


def script_requirements(config: configparser.ConfigParser, field: str, script: str) -> list[str]:
    # modules/extensions.py ExtensionMetadata.get_script_requirements + parse_list.
    text = (
        config.get(f"scripts/{script}", field, fallback="") + ", " + config.get("scripts", field, fallback="")
    )
    return [x for x in re.split(r"[,\s]+", text.lower().strip()) if x]


def test_metadata_orders_after_controlnet_without_requiring_it() -> None:
    config = read_metadata()
    assert config.get("Extension", "Name") == "sd-webui-instantid"
    assert "sd-webui-controlnet" in script_requirements(config, "After", "instantid.py")
    # "Requires" would log an error on every start for users without ControlNet.
    assert not config.has_option("Extension", "Requires")
    assert script_requirements(config, "Requires", "instantid.py") == []
    # Every value reads back (no stray %-interpolation, no inline comments glued to values).
    for section in config.sections():
        for key in config.options(section):
            value = config.get(section, key)
            assert ";" not in value
            assert "#" not in value


# --- javascript/instantid.js and style.css ---------------------------------------------------

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


@needs_node
def test_javascript_syntax() -> None:
    result = subprocess.run(
        [NODE, "--check", str(ROOT / "javascript" / "instantid.js")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


JS_HARNESS = r"""
const m = require(process.argv[1]);
function el(id, classes, parent, shown = true) {
    return {
        id, parentElement: parent || null,
        classList: {contains: (c) => classes.includes(c)},
        getClientRects: () => (shown ? [{}] : []),
        contains(node) {
            for (let n = node; n; n = n.parentElement) if (n === this) return true;
            return false;
        },
    };
}
const page = el("tab_txt2img", [], null);
const outer = el("instantid_txt2img_accordion", ["block", "gradio-accordion", "input-accordion"], page);
const inner = el("", ["block", "gradio-accordion"], outer);
const slot = el("instantid_txt2img_images", ["block", "gradio-image"], inner);
const label = el("", [], outer);
const elsewhere = el("txt2img_prompt", [], page);
const hidden = el("instantid_img2img_images", [], el("x", ["gradio-accordion"], null), false);
const ids = {instantid_txt2img_images: slot, instantid_img2img_images: hidden};
const root = {getElementById: (id) => ids[id] || null};
const lone = el("instantid_txt2img_images", [], page);
const png = {type: "image/png"}, txt = {type: "text/plain"}, jpg = {type: "image/jpeg"};
const result = {
    area: m.areaOf(slot).id,
    areaWithoutAccordion: m.areaOf(lone).id,
    hoverInside: (m.targetSlot(root, label, null) || {}).id || null,
    focusInside: (m.targetSlot(root, null, slot) || {}).id || null,
    hoverOutside: m.targetSlot(root, elsewhere, null),
    noSlots: m.targetSlot({getElementById: () => null}, label, null),
    files: m.imageFiles({files: [png, txt]}).length,
    items: m.imageFiles({files: [], items: [
        {kind: "file", getAsFile: () => jpg}, {kind: "string", getAsFile: () => null}]}).length,
    none: m.imageFiles(null).length,
    textarea: m.isTextEntry({tagName: "TEXTAREA"}),
    button: m.isTextEntry({tagName: "BUTTON"}),
};
console.log(JSON.stringify(result));
"""


@needs_node
def test_javascript_paste_target_logic() -> None:
    result = subprocess.run(
        [NODE, "-e", JS_HARNESS, str(ROOT / "javascript" / "instantid.js")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "area": "instantid_txt2img_accordion",
        "areaWithoutAccordion": "instantid_txt2img_images",
        "hoverInside": "instantid_txt2img_images",
        "focusInside": "instantid_txt2img_images",
        "hoverOutside": None,
        "noSlots": None,
        "files": 1,
        "items": 1,
        "none": 0,
        "textarea": True,
        "button": False,
    }


def test_javascript_uses_our_element_ids_and_no_frameworks() -> None:
    source = (ROOT / "javascript" / "instantid.js").read_text(encoding="utf-8")
    assert '"instantid_" + tab + "_images"' in source
    assert "import " not in source
    assert "require(" not in source


def test_stylesheet_only_styles_our_classes() -> None:
    css = (ROOT / "style.css").read_text(encoding="utf-8")
    selectors = re.findall(r"([^{}]+)\{", re.sub(r"/\*.*?\*/", "", css, flags=re.S))
    assert selectors
    assert all(s.strip().startswith((".instantid", "#instantid")) for s in selectors)
