"""Stand-ins for the Forge Classic classes InstantID uses, with the same semantics as the host's
(``ldm_patched/modules/controlnet.py``, ``modules_forge/unet_patcher.py``,
``modules_forge/controlnet.py`` at 5136ce20): a ControlNet chain that asks its previous node
first and passes every node the same ``cond``; a UNet patcher whose clone deep-copies its model
options and shares the ControlNet chain; ``apply_controlnet_advanced`` that copies the
ControlNet, sets its hint and range and puts it at the head of a clone's chain. The reForge
stand-in differs as that host does (``3b56b268``): five-argument ``get_control``, and its
``control_merge`` ignores the advanced weightings (``advanced_mask_weighting`` included)."""

from __future__ import annotations

import copy
from typing import Any

import torch


def control_merge(own: dict, prev: dict | None) -> dict:
    """The host's merge of a node's control with its previous node's: per layer, a sum."""
    if prev is not None:
        for key in own:
            own[key] = [a + b for a, b in zip(own[key], prev[key], strict=True)]
    return own


class HostControlNet:
    """Forge Classic's ``ControlNet``: ``get_control(x, t, cond, batched_number)`` reads
    ``self.transformer_options``. The control is one signal per block kind (input, middle,
    output) at the size of ``x``: the context's mean per row times the strength, times the
    bilinear-resized ``advanced_mask_weighting`` when it is set (``compute_controlnet_weighting``),
    plus what the previous node returned."""

    weights_masks = True

    def __init__(self, control_model: Any = None, global_average_pooling: bool = False) -> None:
        self.control_model = control_model
        self.global_average_pooling = global_average_pooling
        self.previous_controlnet: Any = None
        self.transformer_options: dict = {}
        self.cond_hint_original: Any = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.contexts: list[torch.Tensor] = []

    def set_cond_hint(self, hint: Any, strength: float = 1.0, percent_range: tuple = (0.0, 1.0)) -> Any:
        self.cond_hint_original, self.strength, self.timestep_percent_range = hint, strength, percent_range
        return self

    def set_previous_controlnet(self, controlnet: Any) -> Any:
        self.previous_controlnet = controlnet
        return self

    def copy_to(self, c: Any) -> None:
        c.cond_hint_original = self.cond_hint_original
        c.strength = self.strength
        c.timestep_percent_range = self.timestep_percent_range
        c.global_average_pooling = self.global_average_pooling
        c.contexts = self.contexts  # one record of what the model saw, shared by the copies

    def copy(self) -> Any:
        c = HostControlNet(self.control_model, global_average_pooling=self.global_average_pooling)
        self.copy_to(c)
        return c

    def own_control(self, x_noisy: torch.Tensor, cond: dict) -> dict:
        context = cond["c_crossattn"]
        self.contexts.append(context)
        signal = context.mean(dim=(1, 2)).view(-1, 1, 1, 1).expand(-1, 2, *x_noisy.shape[-2:]) * self.strength
        mask = getattr(self, "advanced_mask_weighting", None)
        if self.weights_masks and mask is not None:
            size = signal.shape[-2:]
            signal = signal * torch.nn.functional.interpolate(mask.to(signal), size=size, mode="bilinear")
        return {"input": [signal], "middle": [signal], "output": [signal]}

    def get_control(self, x_noisy: Any, t: Any, cond: dict, batched_number: int) -> Any:
        prev = None
        if self.previous_controlnet is not None:
            prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number)
        return control_merge(self.own_control(x_noisy, cond), prev)


class ReForgeControlNet(HostControlNet):
    """reForge's five-argument ``get_control`` (the transformer options passed in); the
    advanced weightings are never applied."""

    weights_masks = False

    def copy(self) -> Any:
        c = ReForgeControlNet(self.control_model)
        self.copy_to(c)
        return c

    def get_control(
        self, x_noisy: Any, t: Any, cond: dict, batched_number: int, transformer_options: dict
    ) -> Any:
        self.seen_options = transformer_options
        prev = None
        if self.previous_controlnet is not None:
            prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        return control_merge(self.own_control(x_noisy, cond), prev)


class UnetPatcher:
    """The UNet patcher: clones deep-copy ``model_options`` and share the ControlNet chain."""

    def __init__(self) -> None:
        self.model_options: dict = {"transformer_options": {}}
        self.controlnet_linked_list: Any = None

    def clone(self) -> UnetPatcher:
        n = UnetPatcher()
        n.model_options = copy.deepcopy(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        return n

    def set_model_attn2_replace(self, patch: Any, block: str, number: int, index: int | None = None) -> None:
        to = self.model_options["transformer_options"]
        key = (block, number) if index is None else (block, number, index)
        to.setdefault("patches_replace", {}).setdefault("attn2", {})[key] = patch

    def set_model_unet_function_wrapper(self, wrapper: Any) -> None:
        self.model_options["model_function_wrapper"] = wrapper

    def add_patched_controlnet(self, cnet: Any) -> None:
        cnet.set_previous_controlnet(self.controlnet_linked_list)
        self.controlnet_linked_list = cnet

    def attn2(self) -> dict:
        return self.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


def apply_controlnet_advanced(
    unet: UnetPatcher,
    controlnet: Any,
    image_bchw: Any,
    strength: float,
    start: float,
    end: float,
    **advanced: Any,
) -> UnetPatcher:
    cnet = controlnet.copy().set_cond_hint(image_bchw, strength, (start, end))
    cnet.advanced_mask_weighting = advanced.get("advanced_mask_weighting")
    m = unet.clone()
    m.add_patched_controlnet(cnet)
    return m


def run_chain(unet: UnetPatcher, chunks: list[int], per_chunk: int, text: torch.Tensor) -> Any:
    """What the host's sampler does per UNet call: set the transformer options on every node,
    then ask the head of the chain with the text ``cond``."""
    batch = len(chunks) * per_chunk
    options = {"cond_or_uncond": chunks}
    node = unet.controlnet_linked_list
    while node is not None:
        node.transformer_options = options
        node = node.previous_controlnet
    cond = {"c_crossattn": text.expand(batch, -1, -1)}
    head = unet.controlnet_linked_list
    x = torch.zeros(batch, 4, 8, 8)
    if isinstance(head, ReForgeControlNet):
        return head.get_control(x, torch.zeros(batch), cond, len(chunks), options)
    return head.get_control(x, torch.zeros(batch), cond, len(chunks))
