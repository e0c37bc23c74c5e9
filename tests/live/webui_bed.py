"""Offline pieces of a real WebUI for the live suite: tokenizer cache, settings, random models.

``setup_webui.sh`` runs this with the WebUI's own Python (``PYTHONPATH`` = this repository,
a folder holding diffusers and the WebUI's ``repositories/generative-models`` and
``repositories/stable-diffusion-stability-ai``); ``setup_forge.sh`` does the same for Forge
Classic, with those two repositories cloned beside it (``--configs``, ``--host forge``), and for
reForge, which has the WebUI's layout (``--host forge``).
Subcommands:

``hf-cache HF_HOME``
    CLIP-L's tokenizer and config in the Hugging Face cache layout. The WebUI builds its SDXL
    text encoder from ``openai/clip-vit-large-patch14`` and would fetch these files; they are
    derived here from the BPE merges shipped in ``open_clip`` (the same vocabulary), so the
    WebUI runs with ``HF_HUB_OFFLINE=1``.
``webui-config WEBUI_DIR CHECKPOINT``
    Merges the few settings the live suite needs into ``config.json`` (no live previews, which
    would download a decoder; the generated checkpoint selected; nothing saved to disk).
``models WEBUI_DIR [--seed N] [--configs DIR] [--host a1111|forge]``
    Random-weight models with the real architectures and key layouts: an SDXL base checkpoint
    built from sgm's ``sd_xl_base.yaml`` (fp16 safetensors), InstantID's ``ip-adapter.bin``
    (full-size Resampler + 70 ``to_k_ip``/``to_v_ip``), IdentityNet (diffusers ControlNetModel
    with the published config), an ordinary SDXL ControlNet and a small ("mid") one, a LoRA on
    the attn2 projections (``models/Lora``), ControlNet's own InstantID file
    names (hard links), the generated antelopev2 pack in both places insightface looks, and an
    SDXL refiner and an SD 1.5 checkpoint (which InstantID refuses) for the checkpoint tests.
    Large files are written tensor by tensor, so memory stays near the largest tensor.
    Files that exist are kept. ``--configs`` is the folder the model configs are read from, laid
    out as the WebUI's (``repositories/generative-models/configs/inference/``,
    ``configs/v1-inference.yaml``; default: WEBUI_DIR). ``--host forge`` writes the face pack
    where a Forge host's built-in InstantID looks for it (one five-file pack in
    ``models/insightface``, which this extension reads too) instead of ControlNet's folder,
    and InstantID's adapter in torch's zip format (see ``write_ip_adapter``).

Every value is drawn from a generator seeded by ``--seed`` and the tensor's name, so the same
seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import logging
import math
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("webui_bed")

REPO_ROOT = Path(__file__).resolve().parents[2]
IDENTITYNET_CONFIG = REPO_ROOT / "tests" / "data" / "identitynet_config.json"

CLIP_L = "openai/clip-vit-large-patch14"
CHECKPOINT_NAME = "sdxl-base-random.safetensors"

# --------------------------------------------------------------------------------------
# Hugging Face cache for CLIP-L (tokenizer + config only)
# --------------------------------------------------------------------------------------

CLIP_L_CONFIG = {
    "architectures": ["CLIPModel"],
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "clip",
    "projection_dim": 768,
    "text_config": {
        "model_type": "clip_text_model",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-05,
        "projection_dim": 768,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
    },
    "vision_config": {
        "model_type": "clip_vision_model",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "image_size": 224,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-05,
        "projection_dim": 768,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
    },
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable character table (the base of the BPE vocabulary)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_vocab_and_merges(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's 49408-token vocabulary and its merges, built as CLIP's own tokenizer builds them."""
    with gzip.open(bpe_gz) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_hf_cache(hf_home: Path) -> Path:
    """``hub/models--openai--clip-vit-large-patch14`` with vocab, merges, tokenizer and model config."""
    import open_clip.tokenizer

    snapshot_root = hf_home / "hub" / ("models--" + CLIP_L.replace("/", "--"))
    vocab, merges = clip_vocab_and_merges(Path(open_clip.tokenizer.default_bpe()))
    special_tokens = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "config.json": json.dumps(CLIP_L_CONFIG, indent=2),
        "special_tokens_map.json": json.dumps(special_tokens),
        "tokenizer_config.json": json.dumps(
            {
                **special_tokens,
                "add_prefix_space": False,
                "do_lower_case": True,
                "errors": "replace",
                "model_max_length": 77,
                "tokenizer_class": "CLIPTokenizer",
            }
        ),
    }
    revision = hashlib.sha1("".join(name + text for name, text in sorted(files.items())).encode()).hexdigest()
    snapshot = snapshot_root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (snapshot / name).write_text(text, encoding="utf-8")
    (snapshot_root / "refs").mkdir(parents=True, exist_ok=True)
    (snapshot_root / "refs" / "main").write_text(revision)
    return snapshot


# --------------------------------------------------------------------------------------
# WebUI settings
# --------------------------------------------------------------------------------------


def write_webui_config(webui: Path, checkpoint: str) -> Path:
    """Merge the live suite's settings into the WebUI's ``config.json`` (other keys are kept)."""
    path = webui / "config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config.update(
        {
            "sd_model_checkpoint": checkpoint,
            "live_previews_enable": False,
            "show_progress_every_n_steps": -1,
            "samples_save": False,
            "grid_save": False,
            "save_images_before_face_restoration": False,
            "auto_launch_browser": "Disable",
            "show_warnings": False,
        }
    )
    path.write_text(json.dumps(config, indent=4))
    return path


# --------------------------------------------------------------------------------------
# Random tensors, written as safetensors one tensor at a time
# --------------------------------------------------------------------------------------

SAFETENSORS_DTYPES = {"float16": "F16", "float32": "F32", "int64": "I64", "bfloat16": "BF16"}


def tensor_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def random_value(name: str, shape: tuple[int, ...], seed: int):
    """A value for one parameter, scaled as a trained network's would be (finite activations).

    Matrices and convolutions: N(0, 1/fan_in), which keeps activations near unit size through
    the normalised blocks; norm scales 1 and shifts 0; other biases small; embeddings small.
    """
    import torch

    g = torch.Generator().manual_seed(tensor_seed(seed, name))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "logit_scale":
        return torch.full(shape, math.log(1 / 0.07))
    if "position_embedding" in name or "positional_embedding" in name:
        return torch.randn(shape, generator=g) * 0.01
    if "token_embedding" in name:
        return torch.randn(shape, generator=g) * 0.02
    if leaf == "text_projection":
        return torch.randn(shape, generator=g) * shape[0] ** -0.5
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=g) * fan_in**-0.5
    if leaf == "weight":  # 1-D weights are the scales of Group/LayerNorms
        return torch.ones(shape)
    if leaf == "bias":
        return torch.randn(shape, generator=g) * 0.01
    return torch.randn(shape, generator=g) * 0.02


def write_streamed_safetensors(
    path: Path,
    specs: dict[str, tuple[tuple[int, ...], str]],
    make: Callable[[str], object],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``{name: (shape, dtype)}`` as safetensors, calling ``make(name)`` for one tensor at a time."""
    import torch

    header: dict[str, object] = {}
    offset = 0
    names = sorted(specs)
    for name in names:
        shape, dtype = specs[name]
        size = math.prod(shape) * torch.empty((), dtype=getattr(torch, dtype)).element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name in names:
            shape, dtype = specs[name]
            tensor = make(name)
            tensor = tensor.to(getattr(torch, dtype)).contiguous()
            if tuple(tensor.shape) != tuple(shape):
                msg = f"{name}: made {tuple(tensor.shape)}, declared {shape}"
                raise ValueError(msg)
            fh.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    tmp.replace(path)
    return path


def meta_specs(state: dict, float_dtype: str = "float16") -> dict[str, tuple[tuple[int, ...], str]]:
    """Shapes and on-disk dtypes of a state dict built on the meta device."""
    specs = {}
    for name, tensor in state.items():
        dtype = float_dtype if tensor.dtype.is_floating_point else str(tensor.dtype).removeprefix("torch.")
        specs[name] = (tuple(tensor.shape), dtype)
    return specs


# --------------------------------------------------------------------------------------
# SDXL base checkpoint (sgm layout, as the WebUI loads it)
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Build sgm's text encoders from configs only, on the meta device: no weights fetched."""
    import open_clip
    import transformers

    create = open_clip.create_model_and_transforms
    from_pretrained = transformers.CLIPTextModel.from_pretrained

    def create_random(*args, pretrained=None, device=None, **kwargs):
        return create(*args, pretrained=None, device="meta", **kwargs)

    def text_model_from_config(name, *args, **kwargs):
        return transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(name))

    open_clip.create_model_and_transforms = create_random
    transformers.CLIPTextModel.from_pretrained = text_model_from_config
    try:
        yield
    finally:
        open_clip.create_model_and_transforms = create
        transformers.CLIPTextModel.from_pretrained = from_pretrained


# The checkpoints the WebUI's model detection tells apart (sd_models_config.py), each from the
# config the WebUI builds it with: (config path below the WebUI, parts as (checkpoint key prefix,
# config entry), modelspec architecture).
SGM_PARTS = (
    ("model.diffusion_model.", "network_config"),
    ("conditioner.", "conditioner_config"),
    ("first_stage_model.", "first_stage_config"),
)
CHECKPOINTS = {
    "sdxl-base": (
        "repositories/generative-models/configs/inference/sd_xl_base.yaml",
        SGM_PARTS,
        "stable-diffusion-xl-v1-base",
    ),
    "sdxl-refiner": (
        "repositories/generative-models/configs/inference/sd_xl_refiner.yaml",
        SGM_PARTS,
        "stable-diffusion-xl-v1-refiner",
    ),
    "sd15": (
        "configs/v1-inference.yaml",
        (
            ("model.diffusion_model.", "unet_config"),
            ("cond_stage_model.", "cond_stage_config"),
            ("first_stage_model.", "first_stage_config"),
        ),
        "stable-diffusion-v1",
    ),
}


def model_config(webui: Path, kind: str = "sdxl-base"):
    from omegaconf import OmegaConf

    return OmegaConf.load(webui / CHECKPOINTS[kind][0])


def checkpoint_meta_state(webui: Path, kind: str = "sdxl-base") -> dict:
    """A checkpoint's state dict (meta tensors), keys as in the released file.

    The model's parts are built on their own (the diffusion wrappers compute noise schedules
    with numpy, which meta tensors cannot), under the names the whole model gives them.
    """
    import torch
    from sgm.util import instantiate_from_config

    params = model_config(webui, kind).model.params
    state = {}
    for prefix, entry in CHECKPOINTS[kind][1]:
        with no_downloads(), torch.device("meta"):
            module = instantiate_from_config(params[entry])
        state.update({prefix + k: v for k, v in module.state_dict().items()})
        del module
    return state


def sdxl_meta_unet(webui: Path):
    import torch
    from sgm.util import instantiate_from_config

    with torch.device("meta"):
        return instantiate_from_config(model_config(webui).model.params.network_config)


def write_checkpoint(webui: Path, path: Path, seed: int, kind: str = "sdxl-base") -> Path:
    import torch

    specs = meta_specs(checkpoint_meta_state(webui, kind))

    def make(name: str):
        if name.endswith("embeddings.position_ids"):
            return torch.arange(specs[name][0][-1]).reshape(specs[name][0])
        return random_value(name, specs[name][0], seed)

    metadata = {"modelspec.architecture": CHECKPOINTS[kind][2], "note": f"random weights, seed {seed}"}
    return write_streamed_safetensors(path, specs, make, metadata)


# --------------------------------------------------------------------------------------
# InstantID and ControlNet files
# --------------------------------------------------------------------------------------


def write_ip_adapter(webui: Path, path: Path, seed: int, legacy: bool = True) -> Path:
    """Full-size ``ip-adapter.bin`` (fp16, torch's legacy format that every loader accepts).

    Forge's ControlNet loader is the exception: behind Forge's own ``torch.load`` wrapper it
    unpickles with the WebUI's ``modules.safe``, which reads only the zip format, and renames any
    file it cannot read to ``*.corrupted``. ``legacy=False`` writes the zip format (torch's
    default, as in the published file) for the Forge beds.
    """
    import torch

    from tests.fakes import weights

    hidden = weights.unet_hidden_sizes(sdxl_meta_unet(webui))
    if len(hidden) != 70:
        msg = f"expected 70 SDXL attn2 layers, found {len(hidden)}"
        raise RuntimeError(msg)
    proj = {k: v.half() for k, v in weights.resampler_state_dict(seed=seed).items()}
    layers = {k: v.half() for k, v in weights.ip_layers_state_dict(hidden, seed=seed + 1).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save({"image_proj": proj, "ip_adapter": layers}, tmp, _use_new_zipfile_serialization=not legacy)
    tmp.replace(path)
    return path


def write_sd15_ip_adapter(path: Path, seed: int) -> Path:
    """An SD1.5 IP-Adapter (768-d tokens) in InstantID's folder: the file InstantID must reject,
    saying what it is (users save one there by mistake)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    proj = {
        "proj.weight": torch.randn(4 * 768, 1024, generator=generator).half() * 0.02,
        "proj.bias": torch.zeros(4 * 768).half(),
        "norm.weight": torch.ones(768).half(),
        "norm.bias": torch.zeros(768).half(),
    }
    width = [320] * 2 + [640] * 2 + [1280] * 2 + [1280] + [1280] * 3 + [640] * 3 + [320] * 3
    layers = {
        f"{2 * n + 1}.{k}.weight": (torch.randn(w, 768, generator=generator) * 0.02).half()
        for n, w in enumerate(width)
        for k in ("to_k_ip", "to_v_ip")
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"image_proj": proj, "ip_adapter": layers}, path, _use_new_zipfile_serialization=False)
    return path


def controlnet_meta_state(transformer_layers: list[int] | None = None) -> dict:
    import torch
    from diffusers import ControlNetModel

    config = {k: v for k, v in json.loads(IDENTITYNET_CONFIG.read_text()).items() if not k.startswith("_")}
    if transformer_layers is not None:
        config["transformer_layers_per_block"] = transformer_layers
    with torch.device("meta"):
        model = ControlNetModel.from_config(config)
    return model.state_dict()


def write_controlnet(path: Path, seed: int, transformer_layers: list[int] | None = None) -> Path:
    """A diffusers-layout SDXL ControlNet with IdentityNet's (= the standard SDXL) config, fp16.

    ``transformer_layers`` replaces the transformer depth per level: ``[0, 0, 1]`` is the layout
    of the published "mid" SDXL ControlNets (about 270M parameters instead of 1.25B), which
    ControlNet recognises by its keys.
    """
    specs = meta_specs(controlnet_meta_state(transformer_layers))
    return write_streamed_safetensors(
        path, specs, lambda name: random_value(name, specs[name][0], seed), {"format": "pt"}
    )


LORA_NAME = "instantid-live-attn2"
LORA_RANK = 4


def write_lora(webui: Path, path: Path, seed: int) -> Path:
    """A kohya-layout SDXL LoRA (rank 4) on the query and output projections of all 70 attn2 layers.

    The WebUI's built-in Lora extension merges it into each Linear's weight when that layer first
    runs: the case where the face attention must use the weights as they run, not as they were.
    Its effect is about as large as a trained style LoRA's at weight 1.
    """
    import torch

    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, module in sdxl_meta_unet(webui).named_modules():
        if not name.endswith("attn2"):
            continue
        for proj, linear in (("to_q", module.to_q), ("to_out_0", module.to_out[0])):
            key = f"lora_unet_{name.replace('.', '_')}_{proj}"
            specs[f"{key}.lora_down.weight"] = ((LORA_RANK, linear.in_features), "float16")
            specs[f"{key}.lora_up.weight"] = ((linear.out_features, LORA_RANK), "float16")
            specs[f"{key}.alpha"] = ((), "float16")
    if len(specs) != 70 * 2 * 3:
        msg = f"expected 70 SDXL attn2 layers, found {len(specs) // 6}"
        raise RuntimeError(msg)

    def make(name: str):
        shape = specs[name][0]
        g = torch.Generator().manual_seed(tensor_seed(seed, name))
        if name.endswith(".alpha"):
            return torch.tensor(float(LORA_RANK))
        if name.endswith("lora_down.weight"):
            return torch.randn(shape, generator=g) * shape[1] ** -0.5
        return torch.randn(shape, generator=g) * 0.5 * LORA_RANK**-0.5

    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(LORA_RANK), "note": "random"}
    return write_streamed_safetensors(path, specs, make, metadata)


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_models(webui: Path, seed: int, configs: Path | None = None, host: str = "a1111") -> list[Path]:
    """Every model file the live suite and the memory comparisons use; existing files are kept.

    ``configs``: the folder holding the model configs (default ``webui``); ``host``: ``a1111`` or
    ``forge`` (where the face packs go, see ``write_face_packs``).
    """
    src = webui if configs is None else configs
    models = webui / "models"
    instantid = models / "instantid"
    identitynet = instantid / "ControlNetModel" / "diffusion_pytorch_model.safetensors"
    cn_models = models / "ControlNet"
    steps: list[tuple[Path, Callable[[Path], object]]] = [
        (models / "Stable-diffusion" / CHECKPOINT_NAME, lambda p: write_checkpoint(src, p, seed)),
        (instantid / "ip-adapter.bin", lambda p: write_ip_adapter(src, p, seed + 10, host != "forge")),
        (identitynet, lambda p: write_controlnet(p, seed + 20)),
        (identitynet.with_name("config.json"), lambda p: shutil.copyfile(IDENTITYNET_CONFIG, p)),
        (instantid / "ip-adapter_sd15.bin", lambda p: write_sd15_ip_adapter(p, seed + 60)),
        (cn_models / "controlnet-sdxl-canny-random.safetensors", lambda p: write_controlnet(p, seed + 30)),
        # The user's own ControlNet unit next to InstantID (small: the "mid" SDXL layout).
        (
            cn_models / "controlnet-sdxl-mid-random.safetensors",
            lambda p: write_controlnet(p, seed + 70, [0, 0, 1]),
        ),
        (models / "Lora" / f"{LORA_NAME}.safetensors", lambda p: write_lora(src, p, seed + 80)),
        (
            cn_models / "ip-adapter_instant_id_sdxl.bin",
            lambda p: link_or_copy(instantid / "ip-adapter.bin", p),
        ),
        (cn_models / "control_instant_id_sdxl.safetensors", lambda p: link_or_copy(identitynet, p)),
        # Checkpoints the extension must refuse, for the checkpoint-switching tests.
        (
            models / "Stable-diffusion" / "sdxl-refiner-random.safetensors",
            lambda p: write_checkpoint(src, p, seed + 40, "sdxl-refiner"),
        ),
        (
            models / "Stable-diffusion" / "sd15-random.safetensors",
            lambda p: write_checkpoint(src, p, seed + 50, "sd15"),
        ),
    ]
    done = []
    for path, build in steps:
        if path.exists():
            log.info("kept %s", path)
        else:
            log.info("writing %s", path)
            build(path)
        done.append(path)
    done += write_face_packs(webui, host)
    return done


# The three antelopev2 models InstantID does not use: (input side, output width) as insightface
# routes them (192×192 → landmarks, 3309 = 3-D 68 points + pose; 212 = 2-D 106 points; 96×96 →
# gender and age).
OPTIONAL_FACE_MODELS = {"1k3d68.onnx": (192, 3309), "2d106det.onnx": (192, 212), "genderage.onnx": (96, 3)}


def optional_face_model_bytes(name: str, seed: int = 0) -> bytes:
    """A small ONNX model with the real input and output shapes (pooled colour → random linear map).

    ControlNet downloads any of the five pack files that is missing and insightface runs every
    model it finds, so its copy of the pack needs these too; their outputs are unused.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tests.fakes import antelopev2_pack

    side, width = OPTIONAL_FACE_MODELS[name]
    rng = np.random.default_rng(tensor_seed(seed, name))
    weight = numpy_helper.from_array((rng.standard_normal((3, width)) * 0.1).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["fc1"]),
        ],
        name.removesuffix(".onnx"),
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, width])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", antelopev2_pack.OPSET)])
    model.ir_version = antelopev2_pack.IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_face_packs(webui: Path, host: str = "a1111") -> list[Path]:
    """The generated antelopev2 pack where this extension and where ControlNet look for it.

    This extension's copy holds the two models it needs (detector, recognizer); ControlNet's
    holds all five file names, as ControlNet requires. On a Forge host (``host="forge"``) the
    built-in InstantID reads ``models/insightface`` too (and fetches any of the five files that
    is missing): one pack there with all five.
    """
    from tests.fakes import antelopev2_pack

    ours = webui / "models" / "insightface"
    if host == "forge":
        places = [(ours, tuple(OPTIONAL_FACE_MODELS))]
    else:
        controlnets = webui / "extensions" / "sd-webui-controlnet" / "annotator" / "downloads" / "insightface"
        places = [(ours, ()), (controlnets, tuple(OPTIONAL_FACE_MODELS))]
    packs = []
    for root, extra in places:
        pack = antelopev2_pack.pack_dir(root)
        if all((pack / name).exists() for name in (antelopev2_pack.DETECTOR, antelopev2_pack.RECOGNIZER)):
            log.info("kept %s", pack)
        else:
            log.info("writing %s", pack)
            antelopev2_pack.write_pack(root)
        for name in extra:
            if not (pack / name).exists():
                (pack / name).write_bytes(optional_face_model_bytes(name))
        packs.append(pack)
    return packs


# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[bed] %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hf-cache")
    p.add_argument("hf_home", type=Path)
    p = sub.add_parser("webui-config")
    p.add_argument("webui", type=Path)
    p.add_argument("checkpoint", nargs="?", default=CHECKPOINT_NAME)
    p = sub.add_parser("models")
    p.add_argument("webui", type=Path)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--configs", type=Path, default=None, help="folder holding the model configs")
    p.add_argument("--host", choices=("a1111", "forge"), default="a1111")
    args = parser.parse_args(argv)

    if args.command == "hf-cache":
        log.info("CLIP-L tokenizer cache in %s", write_hf_cache(args.hf_home))
    elif args.command == "webui-config":
        log.info("settings in %s", write_webui_config(args.webui, args.checkpoint))
    else:
        for path in write_models(args.webui, args.seed, args.configs, args.host):
            log.info("ready %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
