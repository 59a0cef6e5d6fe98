"""Boltzmann posterior over candidates gathered from all ranks (gloo, CPU)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from m3i_mm.models.losses import BoltzmannPosterior
from m3i_mm.models.utils import gather_with_grad

WORLD, N, D = 2, 3, 5


def make_problem():
    """A tiny two-tower model and a global batch of WORLD * N pairs."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * N, 4, generator=gen)
    texts = torch.randn(WORLD * N, 6, generator=gen)
    image_tower = torch.nn.Linear(4, D)
    text_tower = torch.nn.Linear(6, D)
    with torch.no_grad():
        for p in [*image_tower.parameters(), *text_tower.parameters()]:
            p.copy_(torch.randn(p.shape, generator=gen))
    return images, texts, image_tower, text_tower


def contrastive_loss(image_emb, text_emb):
    """Each image predicts its paired text among all gathered texts."""
    posterior = BoltzmannPosterior(temperature=0.5, normalize=True)
    candidates, offset = gather_with_grad(text_emb)
    target = torch.arange(len(image_emb)) + offset
    return posterior(image_emb, candidates, target)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _rank_main(rank, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    images, texts, image_tower, text_tower = make_problem()
    local = slice(rank * N, (rank + 1) * N)
    loss = contrastive_loss(image_tower(images[local]),
                            text_tower(texts[local]))
    loss.backward()
    grads = [p.grad for p in [*image_tower.parameters(),
                              *text_tower.parameters()]]
    for g in grads:  # what DDP does: average the gradients over ranks
        dist.all_reduce(g)
        g /= WORLD
    dist.all_reduce(loss.detach(), op=dist.ReduceOp.SUM)
    out[rank] = dict(loss=loss.detach() / WORLD, grads=grads)
    dist.destroy_process_group()


def test_two_ranks_equal_the_concatenated_batch():
    images, texts, image_tower, text_tower = make_problem()
    single = contrastive_loss(image_tower(images), text_tower(texts))
    single.backward()
    expected = [p.grad for p in [*image_tower.parameters(),
                                 *text_tower.parameters()]]

    out = mp.Manager().dict()
    mp.spawn(_rank_main, args=(_free_port(), out), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        assert torch.allclose(out[rank]['loss'], single.detach(), atol=1e-6)
        for got, want in zip(out[rank]['grads'], expected):
            # Exact gradients, negatives on the other rank included.
            assert torch.allclose(got, want, atol=1e-6)


def test_without_a_process_group_nothing_is_gathered():
    x = torch.randn(4, 3)
    gathered, offset = gather_with_grad(x)
    assert gathered is x and offset == 0


def _balancer_rank_main(rank, port, out):
    from datetime import timedelta

    from m3i_mm.models.utils import GradientNormBalancer
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    # A short timeout turns a rank left waiting in a collective into an
    # error instead of a hang.
    dist.init_process_group(
        'gloo', rank=rank, world_size=WORLD, timeout=timedelta(seconds=30))
    balancer = GradientNormBalancer(gamma=1.0)
    balancer.train()
    assert float(balancer.step()) == 1.0  # nothing measured yet
    x = torch.ones(2, 3, requires_grad=True)
    uni, multi = balancer.tap(x, 'uni'), balancer.tap(x, 'multi')
    # Rank 1's batch has no multi-modal target: its multi norm is 0.
    multi_scale = 2.0 if rank == 0 else 0.0
    (uni.sum() + multi_scale * multi.sum()).backward()
    out[rank] = float(balancer.step())
    dist.destroy_process_group()


def test_balancer_reduces_on_every_rank_even_with_a_zero_norm():
    out = mp.Manager().dict()
    mp.spawn(_balancer_rank_main, args=(_free_port(), out), nprocs=WORLD,
             join=True)
    # Squared norms averaged over ranks: uni 6, multi (24 + 0) / 2 = 12.
    for rank in range(WORLD):
        assert out[rank] == pytest.approx((6 / 12)**0.5)


def _decorrelation_rank_main(rank, port, out):
    from m3i_mm.models.losses import GaussianPosterior
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    pred, target = _decorrelation_problem()
    local = slice(rank * N, (rank + 1) * N)
    posterior = GaussianPosterior(decorrelation_weight=0.5)
    out[rank] = float(posterior(pred[local], target[local]))
    dist.destroy_process_group()


def _decorrelation_problem():
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(WORLD * N, 4, D, generator=gen),
            torch.randn(WORLD * N, 4, D, generator=gen))


def test_decorrelation_uses_the_target_moment_of_all_ranks():
    from m3i_mm.models.losses import GaussianPosterior
    from m3i_mm.models.losses.posteriors import decorrelation_term
    pred, target = _decorrelation_problem()
    out = mp.Manager().dict()
    mp.spawn(_decorrelation_rank_main, args=(_free_port(), out),
             nprocs=WORLD, join=True)
    # Each rank: its own MSE, but C from the whole (equal-sized) batch.
    normed = torch.nn.functional.layer_norm(target, (D, ), eps=1e-6)
    flat = normed.reshape(-1, D)
    corr = flat.T @ flat / len(flat)
    for rank in range(WORLD):
        local = slice(rank * N, (rank + 1) * N)
        p = pred[local].reshape(-1, D)
        want = (torch.nn.functional.mse_loss(pred[local], normed[local])
                + 0.5 * torch.einsum('nd,de,ne->n', p, corr, p).mean() / D)
        assert out[rank] == pytest.approx(float(want), rel=1e-5)
        # ... which differs from the rank's own C (the test can fail).
        own = decorrelation_term(pred[local], normed[local])
        assert float(own) != pytest.approx(
            float(torch.einsum('nd,de,ne->n', p, corr, p).mean() / D),
            rel=1e-3)
    assert GaussianPosterior()(pred, target) == pytest.approx(
        float(torch.nn.functional.mse_loss(pred, normed)))
