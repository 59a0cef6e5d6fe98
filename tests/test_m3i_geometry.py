"""Relative positions, mixing and σ of M3I against hand-computed cases."""
import math

import pytest
import torch

from m3i_mm.models.utils import (derangement, mix_images, patch_centers,
                                 relative_query_embed, sincos_pos_embed,
                                 target_positions_in_input,
                                 target_scale_in_input)


def positions(target_box, target_flip, input_box, input_flip, grid):
    return target_positions_in_input(
        torch.tensor([target_box], dtype=torch.float32),
        torch.tensor([target_flip]),
        torch.tensor([input_box], dtype=torch.float32),
        torch.tensor([input_flip]), grid)[0]


def test_identical_views_map_to_own_patch_centres():
    pos = positions((0, 0, 32, 32), False, (0, 0, 32, 32), False, (2, 2))
    assert pos.tolist() == [[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [1.5, 1.5]]


def test_flipped_target_mirrors_columns():
    pos = positions((0, 0, 32, 32), True, (0, 0, 32, 32), False, (2, 2))
    assert pos.tolist() == [[1.5, 0.5], [0.5, 0.5], [1.5, 1.5], [0.5, 1.5]]


def test_zoomed_target_shrinks_into_input_top_left():
    # Target = top-left quarter of the input's region: u 0.25 -> x 4 px
    # -> 4/32 of the input view = 0.25 input patches (2x2 grid).
    pos = positions((0, 0, 16, 16), False, (0, 0, 32, 32), False, (2, 2))
    assert pos.tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75],
                            [0.75, 0.75]]


def test_offset_target_and_flipped_input():
    # Target patch (0, 0) of a 4x4 grid: centre u = v = 1/8 of the target
    # box (8, 0, 24, 16) -> original (10, 2) -> input fraction (0.3125,
    # 0.0625) -> flipped x 0.6875 -> patches (2.75, 0.25).
    pos = positions((8, 0, 24, 16), False, (0, 0, 32, 32), True, (4, 4))
    assert pos[0].tolist() == pytest.approx([2.75, 0.25])
    # Non-square grid and boxes: last patch of a 2x3 (h, w) grid.
    pos = positions((0, 0, 30, 20), False, (0, 0, 60, 40), False, (2, 3))
    assert pos[-1].tolist() == pytest.approx([1.25, 0.75])


def test_sincos_matches_mmpretrain_layout_on_the_grid():
    from mmpretrain.models.utils import build_2d_sincos_position_embedding
    ref = build_2d_sincos_position_embedding((3, 4), 16)[0]
    # mmpretrain enumerates meshgrid(grid_w, grid_h) with 'ij' indexing.
    xs, ys = torch.meshgrid(
        torch.arange(4.), torch.arange(3.), indexing='ij')
    ours = sincos_pos_embed(torch.stack([xs.flatten(), ys.flatten()], -1), 16)
    assert torch.allclose(ours, ref, atol=1e-6)
    with pytest.raises(ValueError, match='divisible by 4'):
        sincos_pos_embed(torch.zeros(1, 2), 6)


def test_patch_centres_raster_order():
    assert patch_centers((2, 3)).tolist() == [[0.5, 0.5], [1.5, 0.5],
                                              [2.5, 0.5], [0.5, 1.5],
                                              [1.5, 1.5], [2.5, 1.5]]


@pytest.mark.parametrize('n', [2, 3, 5, 16, 64])
def test_sigma_is_a_permutation_without_fixed_points(n):
    gen = torch.Generator().manual_seed(n)
    for _ in range(50):
        sigma = derangement(n, generator=gen)
        assert sorted(sigma.tolist()) == list(range(n))
        assert not (sigma == torch.arange(n)).any()


def test_sigma_of_one_is_identity():
    assert derangement(1).tolist() == [0]


def test_mixing_at_pixel_level():
    n, p = 3, 2
    first = torch.zeros(n, 1, 4, 4)
    second = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(
        n, 1, 4, 4) + 1
    mask = torch.tensor([[[1, 0], [0, 0]], [[0, 1], [1, 0]],
                         [[1, 1], [0, 0]]])
    sigma = torch.tensor([2, 0, 1])
    mixed = mix_images(first, second, mask, sigma, p)
    # Image 0 gets image 2 (value 3) in its top-left 2x2 patch only.
    assert mixed[0, 0].tolist() == [[3, 3, 0, 0], [3, 3, 0, 0], [0, 0, 0, 0],
                                    [0, 0, 0, 0]]
    assert mixed[1, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0],
                                    [1, 1, 0, 0]]
    assert mixed[2, 0, :2].eq(2).all() and mixed[2, 0, 2:].eq(0).all()
    with pytest.raises(ValueError, match='mask shape'):
        mix_images(first, second, mask[:, :1], sigma, p)


def test_relative_scale_of_target_to_input_patches():
    # Both views have the same grid, so patch size ratio = box size ratio;
    # (x, y) order as the positions: (log w_t / w_i, log h_t / h_i).
    target = torch.tensor([[0., 0., 32., 32.], [0., 0., 16., 16.],
                           [8., 0., 24., 32.]])
    inputs = torch.tensor([[0., 0., 32., 32.], [0., 0., 32., 32.],
                           [4., 2., 36., 18.]])
    scale = target_scale_in_input(target, inputs)
    assert scale.flatten().tolist() == pytest.approx(
        [0., 0., math.log(0.5), math.log(0.5),
         math.log(16 / 32), math.log(32 / 16)])
    # Flips move patches, they never resize them (hence no flip argument):
    # target patch (0, 0) of the flipped (0, 0, 16, 16) at u = 0.75 -> x 12
    # px -> 0.375 of the input -> flipped input 0.625 -> 1.25 patches.
    flipped = positions((0, 0, 16, 16), True, (0, 0, 32, 32), True, (2, 2))
    assert flipped[0].tolist() == pytest.approx([1.25, 0.25])
    with pytest.raises(ValueError, match='input boxes'):
        target_scale_in_input(target[:1], torch.tensor([[4., 0., 4., 8.]]))


def test_relative_query_embed_layout():
    # embed_dims 4: one frequency (ω = 1) per half -> [sin x, cos x, sin y,
    # cos y] of the position, then the same of 10 * log ratio.
    pos = torch.tensor([[[0.25, 1.5], [2.0, 0.5]]])
    log_scale = torch.tensor([[math.log(0.5), math.log(2.0)]])
    emb = relative_query_embed(pos, log_scale, 4)
    a, b = 10 * math.log(0.5), 10 * math.log(2.0)
    scale_part = [math.sin(a), math.cos(a), math.sin(b), math.cos(b)]
    assert emb.shape == (1, 2, 8)
    assert emb[0, 0].tolist() == pytest.approx(
        [math.sin(0.25), math.cos(0.25), math.sin(1.5), math.cos(1.5)] +
        scale_part, abs=1e-6)
    assert emb[0, 1, 4:].tolist() == pytest.approx(scale_part, abs=1e-6)
    with pytest.raises(ValueError, match='log_scales'):
        relative_query_embed(pos, log_scale[0], 4)
