"""The InstantID section of the WebUI's Settings tab."""

from __future__ import annotations

SECTION = ("instantid", "InstantID")
PROVIDERS = ["cpu", "cuda", "rocm", "coreml"]


def add_settings() -> None:
    """``on_ui_settings`` callback: options read through ``host.opt`` at generation time."""
    import gradio as gr
    from modules import shared

    default_providers = getattr(shared.cmd_opts, "instantid_providers", None) or "cpu"
    options = {
        "instantid_providers": shared.OptionInfo(
            default_providers,
            "Face analysis runs on (ONNX Runtime provider; falls back to the CPU if unavailable)",
            gr.Radio,
            {"choices": PROVIDERS},
            section=SECTION,
        ),
        "instantid_extra_model_dirs": shared.OptionInfo(
            "",
            "More folders to search for the InstantID adapter and IdentityNet (separate with ;)",
            section=SECTION,
        ),
    }
    for key, info in options.items():
        shared.opts.add_option(key, info)
