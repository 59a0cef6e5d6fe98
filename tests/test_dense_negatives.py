"""DenseBoltzmannPosterior's candidates: all positions of all target images
of the batch, gathered from all ranks and detached (Table 2 (h), Eq. 3,
DenseCL), or the own image's positions only (``negatives='same_image'``)."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from m3i_mm.models.losses import DenseBoltzmannPosterior

WORLD, N, Q, D, TAU = 2, 2, 3, 4, 0.5


def reference(pred, target, same_image: bool,
              first: int = 0) -> torch.Tensor:
    """Eq. 3's cross-entropy written out: for every prediction (n, q),
    -log exp(e(n,q; n,q)) / sum over candidates (m, k) of exp(e(n,q; m,k)),
    e = dot product / τ (no normalisation); prediction n's image is
    ``target[first + n]``."""
    total, count = 0.0, 0
    for n in range(pred.shape[0]):
        own = first + n
        for q in range(pred.shape[1]):
            images = [own] if same_image else range(target.shape[0])
            energies = [float(pred[n, q] @ target[m, k]) / TAU
                        for m in images for k in range(target.shape[1])]
            positive = float(pred[n, q] @ target[own, q]) / TAU
            total += math.log(sum(math.exp(e) for e in energies)) - positive
            count += 1
    return torch.tensor(total / count)


def problem():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(WORLD * N, Q, D, generator=gen),
            torch.randn(WORLD * N, Q, D, generator=gen))


def test_all_images_by_hand():
    pred, target = problem()
    got = DenseBoltzmannPosterior(temperature=TAU)(pred, target)
    want = reference(pred, target, same_image=False)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, reference(pred, target, True), atol=1e-3)


def test_same_image_by_hand():
    pred, target = problem()
    got = DenseBoltzmannPosterior(temperature=TAU,
                                  negatives='same_image')(pred, target)
    assert torch.allclose(got, reference(pred, target, True), atol=1e-5)


def test_no_gradient_reaches_the_targets():
    pred, target = problem()
    pred.requires_grad_(True)
    target.requires_grad_(True)
    DenseBoltzmannPosterior(temperature=TAU)(pred, target).backward()
    assert target.grad is None and pred.grad.abs().sum() > 0


def test_unknown_negatives_named():
    with pytest.raises(ValueError, match="negatives.*'batch'"):
        DenseBoltzmannPosterior(negatives='batch')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _rank_main(rank, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    pred, target = problem()
    local = slice(rank * N, (rank + 1) * N)
    pred = pred[local].clone().requires_grad_(True)
    # The targets come out of a tower with parameters: none may get a
    # gradient, on this rank or through the gather.
    tower = torch.nn.Linear(D, D)
    with torch.no_grad():
        tower.weight.copy_(torch.eye(D))
        tower.bias.zero_()
    loss = DenseBoltzmannPosterior(temperature=TAU)(pred,
                                                    tower(target[local]))
    loss.backward()
    out[rank] = dict(loss=loss.detach(), pred_grad=pred.grad,
                     tower_grads=[p.grad for p in tower.parameters()])
    dist.destroy_process_group()


def test_two_ranks_other_ranks_positions_are_candidates():
    pred, target = problem()
    out = mp.Manager().dict()
    mp.spawn(_rank_main, args=(_free_port(), out), nprocs=WORLD, join=True)
    full = pred.clone().requires_grad_(True)
    DenseBoltzmannPosterior(temperature=TAU)(full, target).backward()
    for rank in range(WORLD):
        local = slice(rank * N, (rank + 1) * N)
        # The local predictions against the candidates of both ranks...
        want = reference(pred[local], target, same_image=False,
                         first=rank * N)
        got = out[rank]['loss']
        assert torch.allclose(got, want, atol=1e-5), rank
        # ...not only against this rank's own images.
        assert not torch.allclose(
            got, reference(pred[local], target[local], False), atol=1e-3)
        # The rank's gradient is the single-process one of its slice
        # (times WORLD: each rank averages over its N * Q predictions).
        assert torch.allclose(out[rank]['pred_grad'],
                              full.grad[local] * WORLD, atol=1e-6)
        assert all(g is None for g in out[rank]['tower_grads'])
