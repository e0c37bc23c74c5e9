"""Live-test helper extension: checks InstantID's face attention inside the server, as it runs.

With ``alwayson_scripts: {"Live probe": {"args": [true, <layer>]}}`` the first UNet call of each
``p.sample`` of the job is watched at one attn2 layer (``<layer>``: 0-69, in IP-Adapter key order).
From what that layer received (its input ``x`` and text context) the probe recomputes the
decoupled cross-attention unfolded, in float32::

    to_out(SDPA(to_q(x), to_k(ctx), to_v(ctx)) + scale · SDPA(to_q(x), K_ip, V_ip))

with the layer's own projections called as the layer runs them (``Linear.forward``: the Lora
extension's merge and the WebUI's fp8 casting apply, hooks do not) and ``K_ip``/``V_ip`` from the
adapter's ``to_k_ip``/``to_v_ip`` and InstantID's face tokens per row (cond rows first, then the
uncond rows, as the CFG denoiser lays them out). It changes nothing in the generation and reports
in the job's ``extra_generation_params`` (the API's ``info``):

``Live probe layer``            the layer's index and module path
``Live probe rows``             the kind of each row of the watched UNet call (``cond,uncond``)
``Live probe scale``            the face tokens' weight applied in that call (0 when inactive)
``Live probe rel err``          max |output - reference| / max |reference|
``Live probe face share``       the same measure between the reference and its text-only part
``Live probe LoRA``             the networks merged into the layer's to_q/to_out when it ran
``Live probe LoRA share``       the measure between the reference and the one with the layer's
                                weights from before the merge (only while a merge is in place)
``Live probe as checkpoint``    whether to_q's and to_out's weights as they ran equal the
                                checkpoint file's (safetensors checkpoints only)
``Live probe error``            why nothing could be compared

With ``args: [true, 0, "controlnet"]`` on a Forge-family host the probe watches the host's
ControlNet chain instead: the context each ControlNet node's model is given (the host's
``ControlNet.get_control``, wrapped for the ``p.sample`` call), first call of each node:

``Live probe ControlNet``       per node, head first: its class, the context's token count and,
                                for InstantID's IdentityNet node, the max |difference| between
                                that context and InstantID's face tokens laid out per row by
                                ``cond_or_uncond`` (``face tokens, max diff 0.0``)

The hooks are put on the layer when ``p.sample`` starts and removed when it returns or raises.
Installed only in the test bed by ``tests/live/setup_webui.sh``; never shipped.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import torch
import torch.nn.functional as F
from modules import script_callbacks, scripts

TITLE = "Live probe"
KEY = "Live probe"
TOKEN_DIM = 2048


class ProbeError(Exception):
    """Something that keeps the probe from comparing; reported, never raised into the job."""


def attn2_layer(unet: torch.nn.Module, index: int) -> Any:
    """InstantID's own walk of the 70 attn2 layers (``Attn2Layer``: ip_index, name, module)."""
    layers = importlib.import_module("instantid_ext.method.sdxl_layers").sdxl_attn2_layers(unet)
    if not 0 <= index < len(layers):
        msg = f"layer {index} is not among the {len(layers)} attn2 layers"
        raise ProbeError(msg)
    return layers[index]


def instantid_patch(p: Any) -> Any:
    """InstantID's attention patch live on ``p``'s job, or None."""
    run = importlib.import_module("instantid_ext.webui.run").run_of(p)
    return None if run is None else run.patch


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    batch, seq, width = t.shape
    return t.reshape(batch, seq, heads, width // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    batch, heads, seq, d = t.shape
    return t.transpose(1, 2).reshape(batch, seq, heads * d)


def projections(attn: torch.nn.Module) -> list[torch.nn.Module]:
    to_out = attn.to_out
    return list(to_out) if isinstance(to_out, (torch.nn.Sequential, torch.nn.ModuleList)) else [to_out]


def project_out(attn: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``to_out`` as the layer runs it, without module hooks (InstantID's adds its term there)."""
    for module in projections(attn):
        hidden = module.forward(hidden)
    return hidden


def compute_dtype(output: torch.Tensor) -> str:
    """The dtype the layer computed in: CPU autocast's (the WebUI runs a CPU UNet stored in fp8
    under bfloat16 autocast), else its output's."""
    device = output.device.type
    try:
        if torch.is_autocast_enabled(device):
            return str(torch.get_autocast_dtype(device)).removeprefix("torch.")
    except TypeError:  # torch before 2.4: per-device functions
        if device == "cpu" and torch.is_autocast_cpu_enabled():
            return str(torch.get_autocast_cpu_dtype()).removeprefix("torch.")
    return str(output.dtype).removeprefix("torch.")


def relative(a: torch.Tensor, reference: torch.Tensor) -> float:
    return float((a - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def merged_networks(*linears: torch.nn.Module) -> list[str]:
    """Names of the networks the Lora extension merged into these Linears (``network_current_names``)."""
    names: set[str] = set()
    for linear in linears:
        for entry in getattr(linear, "network_current_names", ()) or ():
            names.add(str(entry[0] if isinstance(entry, (tuple, list)) else entry))
    return sorted(names)


def unfolded(
    attn: torch.nn.Module,
    x: torch.Tensor,
    context: torch.Tensor,
    face_keys: torch.Tensor,
    face_values: torch.Tensor,
    scale: float,
    weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference output and its text-only part, float32.

    ``face_keys``/``face_values`` are ``[B, 16, C]`` (each row's face tokens through the adapter's
    projections). Without ``weights`` the layer's projections are called as it runs them; with
    ``weights`` (``to_q``/``to_out``: weight, bias) those two use the given tensors instead.
    """
    heads = int(attn.heads)
    if weights is None:
        query = attn.to_q.forward(x)
    else:
        weight, bias = weights["to_q"]
        query = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    dtype = query.dtype
    q = split_heads(query.float(), heads)
    k = split_heads(attn.to_k.forward(context).float(), heads)
    v = split_heads(attn.to_v.forward(context).float(), heads)
    text = F.scaled_dot_product_attention(q, k, v)
    face = F.scaled_dot_product_attention(q, split_heads(face_keys, heads), split_heads(face_values, heads))

    def out(hidden: torch.Tensor) -> torch.Tensor:
        if weights is None:
            return project_out(attn, merge_heads(hidden).to(dtype)).float()
        weight, bias = weights["to_out"]
        bias = None if bias is None else bias.float()
        return F.linear(merge_heads(hidden), weight.float(), bias)

    return out(text + scale * face), out(text)


class Probe:
    """One ``p.sample`` call watched at one attn2 layer."""

    def __init__(self, p: Any, index: int) -> None:
        self.p = p
        self.index = index
        self.layer: Any = None
        self.n_cond: int | None = None
        self.n_total = 0
        self.offset = 0
        self.captured: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.done = False
        self.handles: list[Any] = []

    # -- life cycle -------------------------------------------------------------------------
    @contextlib.contextmanager
    def installed(self):
        global ARMED
        try:
            self.layer = attn2_layer(self.p.sd_model.model.diffusion_model, self.index)
        except Exception as err:
            self.report({"error": f"{type(err).__name__}: {err}"})
            yield
            return
        module = self.layer.module
        self.handles = [
            module.register_forward_pre_hook(self.before, with_kwargs=True),
            module.register_forward_hook(self.after, with_kwargs=True),
        ]
        ARMED = self
        try:
            yield
        finally:
            ARMED = None
            for handle in self.handles:
                handle.remove()
            self.handles = []
            self.captured = None

    def begin_step(self, n_cond: int, n_total: int) -> None:
        self.n_cond, self.n_total, self.offset = n_cond, n_total, 0

    def row_kinds(self, batch: int) -> list[bool]:
        """True for each cond row of this UNet call (cond rows first in the denoiser's batch)."""
        if self.n_cond is None:
            return [True] * batch
        start = self.offset
        self.offset += batch
        return [r < self.n_cond for r in range(start, start + batch)]

    # -- hooks ------------------------------------------------------------------------------
    def before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.done:
            return
        x = args[0] if args else kwargs.get("x")
        context = kwargs.get("context", args[1] if len(args) > 1 else None)
        self.captured = (x.detach().clone(), None if context is None else context.detach().clone())

    def after(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        if self.done or self.captured is None:
            return
        self.done = True
        x, context = self.captured
        self.captured = None
        compute = compute_dtype(output)
        try:
            with torch.no_grad():
                found = {**self.compare(module, x, context, output.detach()), "compute": compute}
        except Exception as err:  # a probe must never break the generation it watches
            found = {"error": f"{type(err).__name__}: {err}"}
        self.report(found)

    # -- the comparison ---------------------------------------------------------------------
    def compare(
        self, attn: torch.nn.Module, x: torch.Tensor, context: torch.Tensor | None, output: torch.Tensor
    ) -> dict[str, Any]:
        if context is None:
            msg = "the layer ran without a text context"
            raise ProbeError(msg)
        patch = instantid_patch(self.p)
        if patch is None:
            msg = "InstantID's attention patch is not installed while sampling"
            raise ProbeError(msg)
        if len(patch.identities) != 1 or patch.mask is not None:
            msg = "the probe covers one person without a region mask"
            raise ProbeError(msg)
        identity = patch.identities[0]
        kinds = self.row_kinds(int(x.shape[0]))
        device = x.device
        tokens = torch.stack(
            [(identity.cond if cond else identity.uncond).reshape(-1, TOKEN_DIM) for cond in kinds]
        ).to(device=device, dtype=torch.float32)
        to_k_ip = patch.adapter.to_k_ip[self.layer.ip_index].weight.to(device=device, dtype=torch.float32)
        to_v_ip = patch.adapter.to_v_ip[self.layer.ip_index].weight.to(device=device, dtype=torch.float32)
        face_keys, face_values = F.linear(tokens, to_k_ip), F.linear(tokens, to_v_ip)
        scale = float(identity.scale) if patch.active else 0.0
        reference, text_only = unfolded(attn, x, context, face_keys, face_values, scale)
        found: dict[str, Any] = {
            "layer": f"{self.index} {self.layer.name}",
            "rows": ",".join("cond" if cond else "uncond" for cond in kinds),
            "scale": scale,
            "rel err": relative(output.float(), reference),
            "face share": relative(text_only, reference),
        }
        to_out = projections(attn)[0]
        found["LoRA"] = "+".join(merged_networks(attn.to_q, to_out)) or "none"
        before_merge = self.weights_before_merge(attn.to_q, to_out)
        if before_merge is not None:
            unmerged, _ = unfolded(attn, x, context, face_keys, face_values, scale, before_merge)
            found["LoRA share"] = relative(unmerged, reference)
        as_checkpoint = self.as_in_checkpoint({"to_q": attn.to_q, "to_out.0": to_out})
        if as_checkpoint is not None:
            found["as checkpoint"] = as_checkpoint
        return found

    @staticmethod
    def weights_before_merge(
        to_q: torch.nn.Module, to_out: torch.nn.Module
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None:
        """to_q's and to_out's weights and biases from before the Lora extension merged into them."""
        weights = {}
        for name, linear in (("to_q", to_q), ("to_out", to_out)):
            backup = getattr(linear, "network_weights_backup", None)
            if not isinstance(backup, torch.Tensor) or not merged_networks(linear):
                return None
            bias = getattr(linear, "network_bias_backup", None)
            if not isinstance(bias, torch.Tensor):
                bias = linear.bias
            device = linear.weight.device
            weights[name] = (
                backup.to(device=device, dtype=torch.float32),
                None if bias is None else bias.to(device=device, dtype=torch.float32),
            )
        return weights

    def as_in_checkpoint(self, linears: dict[str, torch.nn.Module]) -> bool | None:
        """Whether the weights as they ran equal the checkpoint file's (None: not a safetensors file)."""
        info = getattr(self.p.sd_model, "sd_checkpoint_info", None)
        filename = str(getattr(info, "filename", "") or "")
        if not filename.endswith(".safetensors"):
            return None
        from safetensors import safe_open

        prefix = f"model.diffusion_model.{self.layer.name}."
        with safe_open(filename, framework="pt", device="cpu") as file:
            for name, linear in linears.items():
                stored = file.get_tensor(f"{prefix}{name}.weight")
                running = linear.weight.detach().cpu()
                if not torch.equal(stored.to(running.dtype).float(), running.float()):
                    return False
        return True

    def report(self, found: dict[str, Any]) -> None:
        report(self.p, found)


def report(p: Any, found: dict[str, Any]) -> None:
    """The findings as the job's ``Live probe …`` generation parameters (earlier ones replaced)."""
    params = p.extra_generation_params
    for key in [k for k in params if str(k).startswith(KEY)]:
        del params[key]
    for name, value in found.items():
        params[f"{KEY} {name}"] = value


class ControlNetProbe:
    """One ``p.sample`` call on a Forge-family host: the context each ControlNet node runs on."""

    def __init__(self, p: Any) -> None:
        self.p = p
        self.seen: dict[int, str] = {}

    @contextlib.contextmanager
    def installed(self):
        try:
            host_class = importlib.import_module("ldm_patched.modules.controlnet").ControlNet
        except ImportError as err:
            self.report({"error": f"not a Forge-family host: {err}"})
            yield
            return
        original = host_class.__dict__["get_control"]
        probe = self

        def get_control(node: Any, x_noisy: Any, t: Any, cond: Any, batched_number: Any, *rest: Any) -> Any:
            options = rest[0] if rest else getattr(node, "transformer_options", None) or {}
            if id(node) not in probe.seen:
                try:
                    probe.seen[id(node)] = probe.describe(node, cond, options, int(x_noisy.shape[0]))
                except Exception as err:  # a probe must never break the generation it watches
                    probe.seen[id(node)] = f"{type(node).__name__}: {type(err).__name__}: {err}"
            return original(node, x_noisy, t, cond, batched_number, *rest)

        host_class.get_control = get_control
        try:
            yield
        finally:
            host_class.get_control = original
            self.report({"ControlNet": "; ".join(self.seen.values()) or "no ControlNet ran"})

    def describe(self, node: Any, cond: dict, options: dict, batch: int) -> str:
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])  # what the host reads
        text = f"{type(node).__name__}: {int(context.shape[1])} tokens"
        if not type(node).__name__.startswith("IdentityNet"):
            return text
        run = importlib.import_module("instantid_ext.webui.run").run_of(self.p)
        if run is None or run.cast is None:
            return f"{text}, no InstantID job"
        rows = importlib.import_module("instantid_ext.method.attn2_replace").context_rows
        face_cond, face_uncond = run.cast.context_tokens()
        expected = rows(face_cond, face_uncond, options.get("cond_or_uncond") or (), batch)
        if tuple(expected.shape) != tuple(context.shape):
            return f"{text}, not the face tokens' shape {tuple(expected.shape)}"
        diff = float((context.float() - expected.to(context.device).float()).abs().max())
        return f"{text}, face tokens, max diff {diff}"

    def report(self, found: dict[str, Any]) -> None:
        report(self.p, found)


ARMED: Probe | None = None
"""The probe of the ``p.sample`` call running now (the WebUI runs one job at a time)."""


def on_cfg_denoiser(params: Any) -> None:
    """The denoiser's row layout for this step: ``text_cond`` rows are cond, the rest uncond."""
    probe = ARMED
    if probe is None:
        return
    owner = getattr(getattr(params, "denoiser", None), "p", None)
    if owner is not None and owner is not probe.p:
        return
    cond = params.text_cond
    crossattn = cond["crossattn"] if isinstance(cond, dict) else cond
    probe.begin_step(int(crossattn.shape[0]), int(params.x.shape[0]))


class LiveProbe(scripts.Script):
    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr

        return [
            gr.Checkbox(value=False, visible=False),
            gr.Number(value=0, precision=0, visible=False),
            gr.Textbox(value="attn2", visible=False),
        ]

    def process_batch(self, p, enabled=False, layer=0, target="attn2", *args, **kwargs):
        """Watch the next ``p.sample`` call (this wrapper sees every wrapper put on later, and
        runs inside those put on before, InstantID's included: the hooks read its patch when
        the layer runs, which is inside ``p.sample`` in either case)."""
        if not enabled or getattr(vars(p).get("sample"), "live_probe", False):
            return
        inner = p.sample
        index = int(layer)

        def sample_with_probe(*args: Any, **kwargs: Any) -> Any:
            if ARMED is not None:  # an outer call of the same job is watched already
                return inner(*args, **kwargs)
            probe = ControlNetProbe(p) if target == "controlnet" else Probe(p, index)
            with probe.installed():
                return inner(*args, **kwargs)

        sample_with_probe.live_probe = True
        p.sample = sample_with_probe


script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
