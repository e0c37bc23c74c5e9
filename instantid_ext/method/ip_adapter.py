"""Loading InstantID's ``ip-adapter.bin``: the Resampler plus 70 pairs of IP key/value layers.

The file is ``{"image_proj": Resampler weights, "ip_adapter": {"{n}.to_k_ip.weight",
"{n}.to_v_ip.weight"} for n = 1, 3, …, 139}``. We read it without running pickle code
(``torch.load(weights_only=True)``) and also accept a ``.safetensors`` file holding the same
tensors under ``image_proj.*`` / ``ip_adapter.*``. Shapes are validated so a wrong adapter
(an SD1.5 IP-Adapter, a CLIP-image IP-Adapter Plus, FaceID) fails with a clear message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import IncompatibleModelError, ModelFileError
from ..models.discovery import adapter_problem, read_torch_file
from .resampler import Resampler
from .sdxl_layers import NUM_IP_LAYERS, TOKEN_DIM

logger = logging.getLogger(__name__)

FACE_EMBEDDING_DIM = 512
NUM_FACE_TOKENS = 16


@dataclass
class IPAdapter:
    """InstantID's image adapter, ready to use.

    ``to_k_ip[i]`` / ``to_v_ip[i]`` belong to the i-th attn2 layer in IP order (checkpoint key
    ``2i+1``); see :mod:`instantid_ext.method.sdxl_layers`.
    """

    image_proj: Resampler
    to_k_ip: list[nn.Linear]
    to_v_ip: list[nn.Linear]
    source: str = ""

    @property
    def hidden_sizes(self) -> list[int]:
        """Output width of each IP layer (640 or 1280 for SDXL)."""
        return [layer.out_features for layer in self.to_k_ip]

    @torch.no_grad()
    def face_tokens(self, embedding: torch.Tensor) -> torch.Tensor:
        """Embedding(s) ``[512]``, ``[N, 512]`` or ``[B, N, 512]`` → tokens ``[B, 16, 2048]``.

        ``N`` embeddings in one row are fed to the Resampler as N tokens (the reference's
        ``reshape(1, -1, 512)``). To combine several reference photos, average the raw
        embeddings *before* calling this, as the method's authors advise.
        """
        emb = torch.as_tensor(embedding)
        if emb.shape[-1] != FACE_EMBEDDING_DIM:
            msg = f"A face embedding has {FACE_EMBEDDING_DIM} values; got shape {tuple(emb.shape)}."
            raise IncompatibleModelError(msg)
        emb = emb.reshape(1, -1, FACE_EMBEDDING_DIM) if emb.ndim < 3 else emb
        weight = self.image_proj.proj_in.weight
        return self.image_proj(emb.to(device=weight.device, dtype=weight.dtype))

    def uncond_tokens(self, batch: int = 1) -> torch.Tensor:
        """The negative-branch tokens: Resampler(zeros), as the reference builds its CFG batch."""
        zeros = torch.zeros(batch, 1, FACE_EMBEDDING_DIM)
        return self.face_tokens(zeros)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Flat ``{"image_proj.x": t, "ip_adapter.y": t}`` from a .bin/.pt or .safetensors file."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            msg = f"Could not read {path}: {err}. Download the file again; it may be incomplete."
            raise ModelFileError(msg) from err
    raw = read_torch_file(path)
    if not isinstance(raw, Mapping):
        msg = f"{path} does not hold a state dict; it is not an IP-Adapter file."
        raise IncompatibleModelError(msg)
    flat: dict[str, torch.Tensor] = {}
    for group, value in raw.items():
        if isinstance(value, Mapping):
            flat.update({f"{group}.{key}": tensor for key, tensor in value.items()})
        elif isinstance(value, torch.Tensor):
            flat[str(group)] = value
    return flat


def validate_state_dict(state_dict: Mapping[str, torch.Tensor], path: Path | str = "") -> None:
    """Raise :class:`IncompatibleModelError` unless this is InstantID's SDXL adapter."""
    where = f" ({path})" if path else ""
    problem = adapter_problem({key: tuple(t.shape) for key, t in state_dict.items()})
    if problem:
        msg = (
            f"This adapter{where} cannot be used: {problem}. InstantID needs its own ip-adapter.bin "
            "(a Resampler from the 512-d face embedding to 16 tokens of 2048, and 70 SDXL IP layers)."
        )
        raise IncompatibleModelError(msg)
    proj_out = state_dict.get("image_proj.proj_out.weight")
    latents = state_dict["image_proj.latents"]
    if proj_out is None or proj_out.shape[0] != TOKEN_DIM or tuple(latents.shape[:2]) != (1, NUM_FACE_TOKENS):
        msg = f"The Resampler of this adapter{where} does not make 16 tokens of {TOKEN_DIM}: not InstantID's."
        raise IncompatibleModelError(msg)
    expected = {
        f"ip_adapter.{2 * i + 1}.{kind}.weight"
        for i in range(NUM_IP_LAYERS)
        for kind in ("to_k_ip", "to_v_ip")
    }
    for key in sorted(expected, key=lambda k: int(k.split(".")[1])):
        tensor = state_dict.get(key)
        if tensor is None or tensor.ndim != 2 or tensor.shape[1] != TOKEN_DIM:
            found = "missing" if tensor is None else f"shape {tuple(tensor.shape)}"
            msg = (
                f"This adapter{where} does not fit SDXL's {NUM_IP_LAYERS} cross-attention layers: "
                f"`{key}` is {found} (expected [hidden, {TOKEN_DIM}]). "
                "Download InstantID's ip-adapter.bin again."
            )
            raise IncompatibleModelError(msg)
    extra = sorted(k for k in state_dict if k.startswith("ip_adapter.") and k not in expected)
    if extra:
        msg = f"This adapter{where} has keys SDXL's IP layers do not use ({extra[0]}); it is not InstantID's."
        raise IncompatibleModelError(msg)


def _linear(weight: torch.Tensor) -> nn.Linear:
    """A bias-free Linear that owns ``weight`` without a random init first."""
    layer = nn.Linear(1, 1, bias=False)
    layer.in_features, layer.out_features = weight.shape[1], weight.shape[0]
    layer.weight = nn.Parameter(weight, requires_grad=False)
    return layer


def load_ip_adapter(path: str | Path, dtype: torch.dtype = torch.float16) -> IPAdapter:
    """Load and validate InstantID's ``ip-adapter.bin`` (or its ``.safetensors`` twin).

    The Resampler runs once per generation, so it is kept in float32 on the CPU for exact
    reference numerics; the 140 IP layers (340 M parameters) are stored in ``dtype``
    (float16 by default, halving memory) and moved to the GPU only when a generation needs them.
    """
    path = Path(path)
    if not path.is_file():
        msg = (
            f"The InstantID adapter {path} does not exist. Download ip-adapter.bin from the "
            "InstantID release and put it in the WebUI's models/instantid folder."
        )
        raise ModelFileError(msg)
    started = time.perf_counter()
    state_dict = _read_state_dict(path)
    validate_state_dict(state_dict, path)
    prefix = "image_proj."
    proj = {k[len(prefix) :]: v.float() for k, v in state_dict.items() if k.startswith(prefix)}
    image_proj = Resampler.from_state_dict(proj)

    def ip_layers(kind: str) -> list[nn.Linear]:
        return [
            _linear(state_dict[f"ip_adapter.{2 * i + 1}.{kind}.weight"].to(dtype))
            for i in range(NUM_IP_LAYERS)
        ]

    to_k, to_v = ip_layers("to_k_ip"), ip_layers("to_v_ip")
    logger.info("Loaded InstantID adapter %s in %.1f s", path.name, time.perf_counter() - started)
    return IPAdapter(image_proj=image_proj, to_k_ip=to_k, to_v_ip=to_v, source=str(path))
