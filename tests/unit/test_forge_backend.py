"""The Forge-family backend on stand-ins of the host's classes: the face context IdentityNet
sees per row, the other ControlNets' text context, the host's copies, stale passes, and the
patched UNet patcher (70 attn2 patches, earlier patches chained, ours never stacked)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from instantid_ext.forge.backend import ForgeBackend, IdentityNetPass
from instantid_ext.forge.identitynet import FaceContext, identitynet_node
from instantid_ext.method.attention import IPIdentity
from instantid_ext.method.attn2_replace import SDXL_ATTN2_KEYS, Attn2FacePatch, FaceAttention, context_rows
from tests.fakes.forge_classes import (
    HostControlNet,
    ReForgeControlNet,
    UnetPatcher,
    apply_controlnet_advanced,
    run_chain,
)

T, C = 16, 8
COND = torch.full((1, T, C), 3.0)
UNCOND = torch.full((1, T, C), -1.0)
TEXT = torch.full((1, 77, C), 0.5)


class Attention:
    @staticmethod
    def optimized_attention(q, k, v, heads):
        return q


def backend() -> ForgeBackend:
    return ForgeBackend(apply_controlnet_advanced, lambda path: None, Attention)


def test_context_rows_follow_cond_or_uncond() -> None:
    rows = context_rows(COND, UNCOND, [1, 0], 4)
    assert torch.equal(rows, torch.cat([UNCOND.expand(2, -1, -1), COND.expand(2, -1, -1)]))
    per_image = torch.stack([torch.full((T, C), -float(i)) for i in range(1, 3)])
    rows = context_rows(COND, per_image, [0, 1], 4)
    assert torch.equal(rows[2:], per_image) and torch.equal(rows[:2], COND.expand(2, -1, -1))
    assert torch.equal(context_rows(COND, UNCOND, [], 3), COND.expand(3, -1, -1))  # no chunks: cond


@pytest.mark.parametrize("host_class", [HostControlNet, ReForgeControlNet])
def test_identitynet_sees_the_face_tokens_and_the_other_controlnet_the_text(host_class) -> None:
    user = host_class()
    unet = UnetPatcher()
    unet = apply_controlnet_advanced(unet, user, "user hint", 0.5, 0.0, 1.0)
    loaded = host_class()
    node_contexts = loaded.contexts
    unet = apply_controlnet_advanced(
        unet, identitynet_node(loaded, FaceContext(COND, UNCOND)), "kps", 0.8, 0.0, 1.0
    )
    head = unet.controlnet_linked_list
    assert type(head).__name__ == f"IdentityNet{host_class.__name__}" and isinstance(head, host_class)
    assert head.strength == 0.8 and head.cond_hint_original == "kps"  # the host's copy kept our class
    control = run_chain(unet, [1, 0], 2, TEXT)
    user_context = user.contexts[-1]
    assert torch.equal(user_context, TEXT.expand(4, -1, -1))  # the user's unit: its text context
    ours = node_contexts[-1]
    assert torch.equal(ours, torch.cat([UNCOND.expand(2, -1, -1), COND.expand(2, -1, -1)]))
    want = ours.mean(dim=(1, 2)) * 0.8 + TEXT.expand(4, -1, -1).mean(dim=(1, 2)) * 0.5
    assert set(control) == {"input", "middle", "output"}
    for signals in control.values():
        assert torch.allclose(signals[0], want.view(4, 1, 1, 1).expand(4, 2, 8, 8))
    assert head.previous_controlnet.contexts is user.contexts  # the chain is put back


@pytest.mark.parametrize("host_class", [HostControlNet, ReForgeControlNet])
def test_the_face_mask_weights_identitynet_alone_as_forge_classic_weights_a_mask(host_class) -> None:
    """reForge never applies ``advanced_mask_weighting``: the node masks its own residuals, as
    Forge Classic's host would, and leaves the user's unit unmasked."""
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 1.0
    user = host_class()
    unet = apply_controlnet_advanced(UnetPatcher(), user, "user hint", 0.5, 0.0, 1.0)
    node = identitynet_node(host_class(), FaceContext(COND, UNCOND), mask)
    control = run_chain(apply_controlnet_advanced(unet, node, "kps", 0.8, 0.0, 1.0), [0], 1, TEXT)
    # The reference: Forge Classic's host weighting the same mask on a node that sees the face.
    host = HostControlNet().set_cond_hint("kps", 0.8)
    host.advanced_mask_weighting = mask
    face = host.own_control(torch.zeros(1, 4, 8, 8), {"c_crossattn": COND})
    for key, signals in control.items():
        assert torch.equal(signals[0], face[key][0] + TEXT.mean() * 0.5)
        assert torch.allclose(signals[0][0, :, 6:, :], TEXT.mean() * 0.5 * torch.ones(2, 2, 8))  # user only
        assert (signals[0][0, :, :3, :] > TEXT.mean() * 0.5 + 1.0).all()  # IdentityNet on top


def test_a_node_of_an_earlier_pass_passes_the_others_through() -> None:
    live = [True]
    user = HostControlNet()
    unet = apply_controlnet_advanced(UnetPatcher(), user, "user hint", 1.0, 0.0, 1.0)
    loaded = HostControlNet()
    node = identitynet_node(loaded, FaceContext(COND, UNCOND, live=lambda: live[0]))
    unet = apply_controlnet_advanced(unet, node, "kps", 1.0, 0.0, 1.0)
    live[0] = False
    control = run_chain(unet, [0], 1, TEXT)
    assert torch.allclose(control["middle"][0], TEXT.mean().expand(1, 2, 8, 8))
    assert loaded.contexts == []


def test_identitynet_node_leaves_the_loaded_controlnet_as_it_is() -> None:
    loaded = HostControlNet()
    node = identitynet_node(loaded, FaceContext(COND, UNCOND))
    assert type(loaded) is HostControlNet and not hasattr(loaded, "instantid_face")
    twin = node.copy()
    assert type(twin) is type(node) and twin.instantid_face is node.instantid_face


@pytest.fixture
def face(adapter) -> FaceAttention:
    g = torch.Generator().manual_seed(3)
    cond = adapter.face_tokens(torch.randn(512, generator=g) * 20)
    return FaceAttention(adapter, [IPIdentity(cond, adapter.uncond_tokens(), 0.8)])


def test_patched_unet_is_a_clone_with_70_patches_chained_after_earlier_ones(face) -> None:
    def other(q, k, v, extra):
        return q

    unet = UnetPatcher()
    unet.set_model_attn2_replace(other, *SDXL_ATTN2_KEYS[3])
    before = copy.deepcopy(unet.attn2())
    patched = backend().patched_unet(unet, face, None)
    assert unet.attn2().keys() == before.keys()  # the host's own patcher is unchanged
    patches = patched.attn2()
    assert set(patches) == set(SDXL_ATTN2_KEYS)
    assert all(isinstance(p, Attn2FacePatch) and p.face is face for p in patches.values())
    assert patches[SDXL_ATTN2_KEYS[3]].prior is other
    assert all(patches[k].prior is None for k in SDXL_ATTN2_KEYS if k != SDXL_ATTN2_KEYS[3])
    # A host that keeps the first pass's patcher for the hires pass: ours are replaced, not stacked.
    again = backend().patched_unet(patched, face, None)
    assert again.attn2()[SDXL_ATTN2_KEYS[3]].prior is other
    assert all(again.attn2()[k].prior is None for k in SDXL_ATTN2_KEYS if k != SDXL_ATTN2_KEYS[3])


def test_patched_unet_puts_identitynet_at_the_head_with_hint_weight_range_and_mask(face) -> None:
    hint = np.zeros((16, 24, 3), np.uint8)
    hint[4, 5] = 255
    mask = torch.ones(1, 1, 16, 24)
    job = IdentityNetPass(HostControlNet(), FaceContext(COND, UNCOND), hint, 0.7, 0.1, 0.9, mask)
    patched = backend().patched_unet(UnetPatcher(), face, job)
    head = patched.controlnet_linked_list
    assert isinstance(head, HostControlNet) and head.instantid_face is job.face
    assert head.strength == 0.7 and head.timestep_percent_range == (0.1, 0.9)
    assert head.cond_hint_original.shape == (1, 3, 16, 24) and head.cond_hint_original[
        0, :, 4, 5
    ].tolist() == [1, 1, 1]
    assert head.instantid_mask is mask and head.advanced_mask_weighting is None  # the node masks
    assert len(patched.attn2()) == len(SDXL_ATTN2_KEYS)


def test_text_attention_is_the_hosts() -> None:
    q = torch.randn(1, 4, 8)
    assert backend().text_attention(q, q, q, 2) is q
