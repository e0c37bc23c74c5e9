"""Components made from the args model: ranges, defaults and ids are never written twice.

:class:`Panel` carries what every section builder needs (the tab, the host, the components
made so far) and makes the panel's recurring controls: a slider, checkbox or radio for a
field with the field's default, a hidden face-number box with the field's range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from ...args import InstantIDArgs, Person
from ...args.ranges import field_range
from .env import UiEnv, elem_id
from .handlers import DEFAULT_PREVIEW_SIZE, show_face_index
from .values import default_value

#: Height of the photo drop zones (px); gradio's default is about 240.
PHOTO_DROP_HEIGHT = 110
#: Narrowest a start/end slider gets (px): four share one row.
FRACTION_MIN_WIDTH = 100
#: The radios' choices: (label, argument value).
FACE_CHOICES = [
    ("Largest", "largest"),
    ("Face number…", "index"),
    ("Clearest", "highest_score"),
]


def field_slider(
    name: str,
    *,
    step: float,
    label: str,
    elem_id: str,
    info: str | None = None,
    model: type[InstantIDArgs] | type[Person] = InstantIDArgs,
    min_width: int = 160,
) -> Any:
    """A slider whose range and default are the args model's field's, so that the panel never
    offers a value the API would refuse."""
    bounds = field_range(model, name)
    value = default_value(name) if model is InstantIDArgs else model.__fields__[name].get_default()
    extra = {"min_width": min_width} if info is None else {"min_width": min_width, "info": info}
    return gr.Slider(
        minimum=bounds.low, maximum=bounds.high, step=step, value=value, label=label, elem_id=elem_id, **extra
    )


def host_components() -> tuple[Any, Any]:
    """A1111's InputAccordion (1.6+) and ToolButton, or None where they are missing."""
    try:
        from modules import ui_components  # type: ignore[import-not-found]
    except ImportError:
        return None, None
    return getattr(ui_components, "InputAccordion", None), getattr(ui_components, "ToolButton", None)


@dataclass
class Panel:
    """The panel being built: its tab and host, and the components made so far."""

    tab: str
    env: UiEnv
    #: A1111's ToolButton, or None (a small gr.Button stands in).
    tool_button: Any = None
    #: The argument components, by field name.
    args: dict[str, Any] = field(default_factory=dict)
    #: Other components the events need, by name.
    parts: dict[str, Any] = field(default_factory=dict)

    @property
    def is_img2img(self) -> bool:
        return self.tab == "img2img"

    def eid(self, name: str) -> str:
        return elem_id(self.tab, name)

    def slider(
        self, name: str, step: float, label: str, info: str | None = None, min_width: int = 160
    ) -> Any:
        """The argument ``name`` as a slider."""
        return field_slider(
            name, step=step, label=label, info=info, elem_id=self.eid(name), min_width=min_width
        )

    def fraction(self, name: str, label: str) -> Any:
        """A 0–1 slider for when, as a fraction of the sampling steps, an effect is on (as
        ControlNet's own start/end sliders, without a help line)."""
        return self.slider(name, 0.01, label, min_width=FRACTION_MIN_WIDTH)

    def checkbox(self, name: str, label: str, info: str | None = None) -> Any:
        extra = {} if info is None else {"info": info}
        return gr.Checkbox(value=default_value(name), label=label, elem_id=self.eid(name), **extra)

    def radio(self, name: str, choices: Sequence[Any], label: str, info: str | None = None) -> Any:
        extra = {} if info is None else {"info": info}
        return gr.Radio(
            choices=list(choices), value=default_value(name), label=label, elem_id=self.eid(name), **extra
        )

    def face_number(self, name: str, choice: Any) -> Any:
        """A face number box with the field's range, shown only while ``choice`` is "index"."""
        bounds = field_range(InstantIDArgs, name)
        number = gr.Number(
            value=default_value(name),
            precision=0,
            minimum=bounds.low,
            maximum=bounds.high,
            label="Face number",
            info="0 = leftmost face.",
            visible=False,
            elem_id=self.eid(name),
        )
        choice.change(show_face_index, inputs=[choice], outputs=[number], queue=False)
        return number

    def tool(self, value: str, name: str, tooltip: str) -> Any:
        """A small icon button (A1111's ToolButton where there is one)."""
        if self.tool_button is not None:
            return self.tool_button(value=value, elem_id=self.eid(name), tooltip=tooltip)
        return gr.Button(
            value=value, elem_id=self.eid(name), elem_classes=["tool"], size="sm", scale=0, min_width=40
        )

    def picture(self, label: str, name: str) -> Any:
        """An output image a preview draws into, hidden until it has drawn something."""
        return gr.Image(label=label, type="numpy", interactive=False, visible=False, elem_id=self.eid(name))

    def photos(self, label: str, name: str) -> Any:
        """A drop zone for face photos, kept low: it is a target, not a viewer."""
        return gr.File(
            label=label,
            file_count="multiple",
            file_types=["image"],
            type="binary",
            height=PHOTO_DROP_HEIGHT,
            elem_id=self.eid(name),
        )

    def size_inputs(self, prefix: str) -> tuple[Any, Any]:
        """Hidden width and height inputs, filled from the tab's sliders when a preview runs."""
        return tuple(  # type: ignore[return-value]
            gr.Number(
                value=DEFAULT_PREVIEW_SIZE, precision=0, visible=False, elem_id=self.eid(f"{prefix}_{n}")
            )
            for n in ("width", "height")
        )
