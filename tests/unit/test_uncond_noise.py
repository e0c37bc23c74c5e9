"""Negative-embedding noise: uncond face tokens = Resampler(noise · U[0, 1)^512), seeded per generation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from instantid_ext.errors import InvalidInputError
from instantid_ext.job.conditioning import FaceTokens, uncond_noise_embedding
from instantid_ext.method.ip_adapter import IPAdapter
from instantid_ext.method.resampler import Resampler
from tests.fakes.weights import resampler_state_dict

SEED = 1234567


@pytest.fixture(scope="module")
def adapter() -> IPAdapter:
    resampler = Resampler.from_state_dict(resampler_state_dict(dim=128, heads=2, seed=3))
    return IPAdapter(image_proj=resampler, to_k_ip=[], to_v_ip=[])


@pytest.fixture(scope="module")
def embedding() -> np.ndarray:
    return (np.random.default_rng(7).standard_normal(512) * 20).astype(np.float32)


def test_noise_zero_is_exactly_resampler_of_zeros(adapter: IPAdapter, embedding: np.ndarray) -> None:
    zeros = adapter.face_tokens(torch.zeros(1, 1, 512))
    for tokens in (
        FaceTokens.from_embedding(adapter, embedding),
        FaceTokens.from_embedding(adapter, embedding, noise=0.0, seed=SEED),
        FaceTokens.from_embedding(adapter, embedding, noise=0, seed=None),
    ):
        assert torch.equal(tokens.uncond, zeros)
        assert torch.equal(tokens.uncond, adapter.uncond_tokens())
        assert tokens.uncond.shape == (1, 16, 2048)


def test_noise_is_resampler_of_scaled_uniform(adapter: IPAdapter, embedding: np.ndarray) -> None:
    tokens = FaceTokens.from_embedding(adapter, embedding, noise=0.35, seed=SEED)
    draw = uncond_noise_embedding(0.35, SEED)
    assert torch.equal(tokens.uncond, adapter.face_tokens(draw))
    assert tokens.uncond.shape == (1, 16, 2048)
    assert tokens.uncond.device.type == "cpu"
    assert not torch.equal(tokens.uncond, adapter.uncond_tokens())
    # The condition branch does not depend on the noise.
    assert torch.equal(tokens.cond, FaceTokens.from_embedding(adapter, embedding).cond)

    # One uniform draw per seed, scaled by ``noise``: U[0, 1) × noise.
    unit = uncond_noise_embedding(1.0, SEED)
    assert unit.shape == (512,)
    assert unit.dtype == torch.float32
    assert torch.equal(draw, 0.35 * unit)
    assert float(unit.min()) >= 0.0
    assert float(unit.max()) < 1.0
    assert abs(float(unit.mean()) - 0.5) < 0.05  # 512 uniform samples: std of the mean ≈ 0.013
    assert float(unit.std()) == pytest.approx(1 / np.sqrt(12), abs=0.03)


def test_same_seed_same_tokens_other_seed_other_tokens(adapter: IPAdapter, embedding: np.ndarray) -> None:
    first = FaceTokens.from_embedding(adapter, embedding, noise=0.35, seed=SEED)
    again = FaceTokens.from_embedding(adapter, embedding, noise=0.35, seed=SEED)
    other = FaceTokens.from_embedding(adapter, embedding, noise=0.35, seed=SEED + 1)
    assert torch.equal(first.uncond, again.uncond)
    assert not torch.equal(first.uncond, other.uncond)
    assert not torch.equal(uncond_noise_embedding(1.0, 0), uncond_noise_embedding(1.0, 1))
    # numpy integers and A1111's full seed range work; the draw depends only on the seed value.
    assert torch.equal(uncond_noise_embedding(0.5, np.int64(SEED)), uncond_noise_embedding(0.5, SEED))
    assert torch.equal(uncond_noise_embedding(np.float32(0.5), SEED), uncond_noise_embedding(0.5, SEED))
    for seed in (-1, 2**32 - 1, 2**63 + 5):
        assert torch.equal(uncond_noise_embedding(0.2, seed), uncond_noise_embedding(0.2, seed))


def test_draw_is_not_the_sampler_stream_of_the_same_seed() -> None:
    """The host draws its latent noise from the same seed: the face noise must not reuse it."""
    plain = torch.rand(512, generator=torch.Generator().manual_seed(SEED))
    assert not torch.equal(uncond_noise_embedding(1.0, SEED), plain)


def test_global_random_state_is_untouched(adapter: IPAdapter, embedding: np.ndarray) -> None:
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()

    tokens = FaceTokens.from_embedding(adapter, embedding, noise=0.5, seed=SEED)

    assert torch.equal(torch.random.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0]
    np.testing.assert_array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]
    assert random.getstate() == py_state

    # And the global seed does not leak into the draw either.
    torch.manual_seed(1)
    np.random.seed(1)
    reseeded = FaceTokens.from_embedding(adapter, embedding, noise=0.5, seed=SEED)
    assert torch.equal(tokens.uncond, reseeded.uncond)


@pytest.mark.parametrize("noise", [-0.01, 1.01, float("nan"), float("inf"), True, "0.3", None])
def test_noise_outside_zero_to_one_is_refused(
    adapter: IPAdapter, embedding: np.ndarray, noise: object
) -> None:
    with pytest.raises(InvalidInputError, match="from 0 to 1"):
        FaceTokens.from_embedding(adapter, embedding, noise=noise, seed=SEED)  # type: ignore[arg-type]


def test_noise_needs_a_whole_number_seed(adapter: IPAdapter, embedding: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match="generation seed"):
        FaceTokens.from_embedding(adapter, embedding, noise=0.3)
    for seed in (1.5, "12", True):
        with pytest.raises(InvalidInputError, match="whole number"):
            FaceTokens.from_embedding(adapter, embedding, noise=0.3, seed=seed)  # type: ignore[arg-type]
