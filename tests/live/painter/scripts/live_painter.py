"""Live-test helper extension: makes a generation "produce" a given picture.

The live test bed runs random-weight models, whose outputs hold no face, so the face pass
would have nothing to work on. With ``alwayson_scripts: {"Live painter": {"args": [<base64
PNG>]}}`` this script replaces each output, in ``postprocess_image``, with that picture, before
InstantID's own ``postprocess_image`` (extensions run in folder order, and this folder sorts
first). With a second argument ``"x,y"`` the picture is pasted at that point of the output
instead, so the rest of the output is what the generation made. Installed only in the test bed
by ``tests/live/setup_webui.sh``; never shipped.
"""

import base64
import io

import gradio as gr
from modules import script_callbacks, scripts
from PIL import Image


class LivePainter(scripts.Script):
    def title(self):
        return "Live painter"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Textbox(value="", visible=False), gr.Textbox(value="", visible=False)]

    def postprocess_image(self, p, pp, *args):
        if not args or not args[0]:
            return
        picture = Image.open(io.BytesIO(base64.b64decode(args[0]))).convert("RGB")
        if len(args) > 1 and args[1]:
            x, y = (int(v) for v in args[1].split(","))
            image = pp.image.convert("RGB")
            image.paste(picture, (x, y))
            pp.image = image
            return
        pp.image = picture.resize(pp.image.size) if picture.size != pp.image.size else picture


# -- ControlNet's model builds, for the live suite ---------------------------------------------------
# ``GET /live-painter/v1/controlnet-builds`` lists the model names ControlNet built (read from
# disk) since the server started, in order; a model served from its cache is not listed.
BUILDS = []


def _count_controlnet_builds(script_class):
    original = script_class.__dict__.get("build_control_model")
    build = original.__func__ if isinstance(original, staticmethod) else original
    if build is None or getattr(build, "live_painter_counts", False):
        return

    def build_control_model(p, unet, model):
        BUILDS.append(model)
        return build(p, unet, model)

    build_control_model.live_painter_counts = True
    script_class.build_control_model = staticmethod(build_control_model)


def _on_app_started(_demo, app):
    for runner in (scripts.scripts_txt2img, scripts.scripts_img2img):
        for script in getattr(runner, "alwayson_scripts", []):
            if script.title().lower() == "controlnet":
                _count_controlnet_builds(type(script))
    app.add_api_route("/live-painter/v1/controlnet-builds", lambda: {"builds": list(BUILDS)}, methods=["GET"])


script_callbacks.on_app_started(_on_app_started)
