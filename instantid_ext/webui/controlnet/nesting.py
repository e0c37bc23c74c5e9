"""A generation nested in another one (the face pass): ControlNet's state of the outer job
comes back afterwards."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .access import ControlNetAccess


class NestedGenerations(ControlNetAccess):
    """Saves and restores ControlNet's state around a nested generation."""

    @contextlib.contextmanager
    def preserved(self, p: Any) -> Iterator[None]:
        """Run a generation nested in ``p``'s and give ControlNet back its state for ``p`` after.

        ControlNet keeps one job's state on its (shared) script object and hooks the UNet for
        it; a nested generation's ``process`` unhooks the outer job and replaces that state.
        Afterwards the nested network is unhooked, the outer job's units, detected maps and
        post-processors are put back and, if the outer job was hooked, it is hooked again with
        its own parameters, so the outer job's next batch samples as before. The user's
        IP-Adapter and ControlLLLite units, which ControlNet hooks outside its network and the
        nested job cleared, are hooked back as they were.
        """
        script = self._ec.find_cn_script(getattr(p, "scripts", None))
        if script is None:
            yield
            return
        names = ("latest_network", "enabled_units", "detected_map", "post_processors", "noise_modifier")
        missing = object()
        saved = {name: getattr(script, name, missing) for name in names}
        outer = saved["latest_network"]
        outer_params = getattr(outer, "control_params", None) if outer not in (None, missing) else None
        secondary = _saved_secondary_models()
        try:
            yield
        finally:
            with self._internals("restore ControlNet after a nested generation"):
                current = getattr(script, "latest_network", None)
                if current is not None and current is not outer:
                    current.restore()
                for name, value in saved.items():
                    if value is not missing:
                        setattr(script, name, value)
                if outer_params is not None and getattr(outer, "control_params", None) is None:
                    separate, style_align = _batch_options(script, self._ec)
                    outer.hook(
                        model=host_unet(p),
                        sd_ldm=p.sd_model,
                        control_params=outer_params,
                        process=p,
                        batch_option_uint_separate=separate,
                        batch_option_style_align=style_align,
                    )
                for restore in secondary:
                    restore()


def host_unet(p: Any) -> Any:
    return p.sd_model.model.diffusion_model


SECONDARY_MODELS = (
    ("scripts.ipadapter.plugable_ipadapter", "all_hacks", "ipadapter_hacks"),
    ("scripts.controlnet_lllite", "all_hack", "lllite_list"),
)
"""ControlNet's models hooked on the UNet's layers outside its network: the module, its table
of hacked layers (layer -> the forward it replaced) and each layer's list of hacks."""


def _saved_secondary_models() -> list[Callable[[], None]]:
    """What IP-Adapter and ControlLLLite units have hooked on the UNet now, and how to put it back.

    ControlNet's ``process`` and ``postprocess`` clear them (``clear_all_secondary_control_models``)
    for every job, a nested one included; each returned function first undoes what is hooked
    then, then re-installs each layer's hacked ``forward``, its hacks and the module's table.
    """
    restores: list[Callable[[], None]] = []
    for module_name, table_name, hacks_name in SECONDARY_MODELS:
        module = sys.modules.get(module_name)
        table = getattr(module, table_name, None)
        if not isinstance(table, dict):
            continue
        layers = {
            layer: (vars(layer).get("forward"), list(getattr(layer, hacks_name, []))) for layer in table
        }
        saved_table = dict(table)
        extra = {name: getattr(module, name) for name in ("current_model",) if hasattr(module, name)}
        hooked = functools.partial(_rehook, module, table_name, hacks_name, layers, saved_table, extra)
        restores.append(hooked)
    return restores


def _rehook(
    module: Any, table_name: str, hacks_name: str, layers: dict[Any, tuple], table: dict, extra: dict
) -> None:
    """Undo the secondary hooks there now, then put back ``layers`` (layer -> its hacked forward
    and hacks, as :func:`_saved_secondary_models` found them), the module's ``table`` (layer ->
    the forward it replaced) and its other state."""
    for layer, forward in list(getattr(module, table_name, {}).items()):
        layer.forward = forward
        setattr(layer, hacks_name, [])
    for layer, (forward, hacks) in layers.items():
        if forward is not None:
            layer.forward = forward
        setattr(layer, hacks_name, hacks)
    setattr(module, table_name, dict(table))
    for name, value in extra.items():
        setattr(module, name, value)


SEPARATE_BATCH_OPTION = "Each ControlNet unit for each image in a batch"
"""``BatchOption.SEPARATE.value`` (``scripts.enums`` from 1.1.448, ``external_code`` before)."""


def _batch_options(script: Any, external_code: Any = None) -> tuple[bool, bool]:
    """ControlNet's "unit separate" and "style align" batch options, as its process reads them."""
    state = getattr(script, "ui_batch_option_state", None) or ["", False]
    option = getattr(sys.modules.get("scripts.enums"), "BatchOption", None)
    option = option or getattr(external_code, "BatchOption", None)
    separate_value = getattr(getattr(option, "SEPARATE", None), "value", SEPARATE_BATCH_OPTION)
    return state[0] == separate_value, bool(state[1])
