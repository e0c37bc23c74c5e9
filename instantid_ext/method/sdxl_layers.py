"""Where the 70 cross-attention (attn2) layers of the SDXL UNet are, in IP-Adapter key order.

``ip-adapter.bin["ip_adapter"]`` numbers its layers the way diffusers registers attention
processors: down blocks, then *up* blocks, then the mid block (attn1 takes the even slots,
so the n-th attn2 uses keys ``{2n+1}.to_k_ip.weight`` / ``{2n+1}.to_v_ip.weight``). In the
WebUI's sgm ``UNetModel`` (ldm naming) that is:

- keys 1, 3, 5, 7: ``input_blocks.{4,5}.1.transformer_blocks.{0,1}`` (640 wide, 10 heads)
- keys 9 … 47: ``input_blocks.{7,8}.1.transformer_blocks.{0..9}`` (1280, 20 heads)
- keys 49 … 107: ``output_blocks.{0,1,2}.1.transformer_blocks.{0..9}`` (1280, 20 heads)
- keys 109 … 119: ``output_blocks.{3,4,5}.1.transformer_blocks.{0,1}`` (640, 10 heads)
- keys 121 … 139: ``middle_block.1.transformer_blocks.{0..9}`` (1280, 20 heads)

The UNet *executes* input → middle → output, so execution order is not key order. This is
the only place the walk is defined.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import IncompatibleModelError

SDXL_ATTN2_BLOCKS: tuple[tuple[str, int], ...] = (
    ("input_blocks", 4),
    ("input_blocks", 5),
    ("input_blocks", 7),
    ("input_blocks", 8),
    ("output_blocks", 0),
    ("output_blocks", 1),
    ("output_blocks", 2),
    ("output_blocks", 3),
    ("output_blocks", 4),
    ("output_blocks", 5),
    ("middle_block", -1),
)
"""Blocks holding a SpatialTransformer, in IP key order (-1: the block is not indexed)."""

NUM_IP_LAYERS = 70
TOKEN_DIM = 2048
"""Width of SDXL's text context, and so of the face tokens."""


@dataclass(frozen=True)
class Attn2Layer:
    """One cross-attention layer and the number of its IP-Adapter keys."""

    ip_index: int
    """Position 0…69 in IP order; the checkpoint keys are ``{2*ip_index+1}.to_k_ip.weight``."""
    name: str
    """Module path inside the UNet, e.g. ``input_blocks.4.1.transformer_blocks.0.attn2``."""
    module: nn.Module

    @property
    def key_id(self) -> int:
        return 2 * self.ip_index + 1


def _spatial_transformer(block: nn.Module, path: str) -> tuple[str, nn.Module]:
    # TimestepEmbedSequential([ResBlock, SpatialTransformer, ...]): the transformer is [1].
    if isinstance(block, (nn.Sequential, nn.ModuleList)) and len(block) > 1:
        candidate = block[1]
        if hasattr(candidate, "transformer_blocks"):
            return f"{path}.1", candidate
    msg = f"UNet block {path} has no SpatialTransformer at position 1; this is not an SDXL UNet."
    raise IncompatibleModelError(msg)


def sdxl_attn2_layers(unet: nn.Module) -> list[Attn2Layer]:
    """Return the 70 attn2 layers of an sgm/ldm SDXL ``UNetModel`` in IP key order.

    Raises :class:`IncompatibleModelError` for UNets of another shape (SD1.x/2.x, the SDXL
    refiner, SSD-1B and other distilled SDXL variants), naming what differs.
    """
    layers: list[Attn2Layer] = []
    for attr, index in SDXL_ATTN2_BLOCKS:
        container = getattr(unet, attr, None)
        if container is None:
            msg = f"The UNet has no `{attr}`; it is not an SDXL UNet."
            raise IncompatibleModelError(msg)
        try:
            block = container if index < 0 else container[index]
        except IndexError:
            msg = f"The UNet has no {attr}.{index}; it is not an SDXL base UNet."
            raise IncompatibleModelError(msg) from None
        path = attr if index < 0 else f"{attr}.{index}"
        st_path, transformer = _spatial_transformer(block, path)
        for j, tblock in enumerate(transformer.transformer_blocks):
            name = f"{st_path}.transformer_blocks.{j}.attn2"
            layers.append(Attn2Layer(len(layers), name, tblock.attn2))
    if len(layers) != NUM_IP_LAYERS:
        msg = (
            f"The UNet has {len(layers)} cross-attention layers where SDXL base has {NUM_IP_LAYERS}; "
            "InstantID only works with SDXL base models (not SSD-1B, the refiner or other "
            "distilled variants)."
        )
        raise IncompatibleModelError(msg)
    context_dim = layers[0].module.to_k.in_features
    if context_dim != TOKEN_DIM:
        msg = (
            f"The UNet's cross-attention takes {context_dim}-wide context where SDXL base takes "
            f"{TOKEN_DIM}; InstantID needs an SDXL base model (the refiner is not supported)."
        )
        raise IncompatibleModelError(msg)
    return layers
