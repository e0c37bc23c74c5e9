"""Live-test helper extension: makes a generation "produce" a given picture.

The live test bed runs random-weight models, whose outputs hold no face, so the face pass
would have nothing to work on. With ``alwayson_scripts: {"Live painter": {"args": [<base64
PNG>]}}`` this script replaces each output, in ``postprocess_image``, with that picture, before
InstantID's own ``postprocess_image`` (extensions run in folder order, and this folder sorts
first). Installed only in the test bed by ``tests/live/setup_webui.sh``; never shipped.
"""

import base64
import io

import gradio as gr
from modules import scripts
from PIL import Image


class LivePainter(scripts.Script):
    def title(self):
        return "Live painter"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Textbox(value="", visible=False)]

    def postprocess_image(self, p, pp, *args):
        if not args or not args[0]:
            return
        picture = Image.open(io.BytesIO(base64.b64decode(args[0]))).convert("RGB")
        pp.image = picture.resize(pp.image.size) if picture.size != pp.image.size else picture
