"""Random draws as functions of (seed, rank, position), not of processes."""
import numpy as np
import pytest
from mmengine.dataset import InfiniteSampler
from torch.utils.data import DataLoader, Dataset

from m3i_mm.engine import SeededDataset
from m3i_mm.engine.hooks import SeededSampler
from m3i_mm.utils.randomness import SeededIndex, derive_seed


class RandomDraws(Dataset):
    """Sample i: (i, a draw of numpy's global generator), as a transform."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return int(index), int(np.random.randint(1 << 30))


def draws(num_workers: int, skipped: int = 0, num_batches: int = 6):
    ds = RandomDraws()
    sampler = InfiniteSampler(ds, seed=0)
    sampler.skip(skipped)  # mmengine's fast-forward on resume
    # M3IRunner wraps a map-style train dataset so; the hook, the sampler.
    loader = DataLoader(SeededDataset(ds), batch_size=4, sampler=sampler,
                        num_workers=num_workers, collate_fn=list)
    loader.batch_sampler.sampler = SeededSampler(sampler, ds, seed=3,
                                                 start=skipped)
    it = iter(loader)
    return [s for _ in range(num_batches) for s in next(it)]


def test_sample_draws_do_not_depend_on_workers_or_resume():
    reference = draws(num_workers=0)
    # Each index is drawn again in the next pass, with other numbers.
    assert len({d for _, d in reference}) == len(reference)
    assert draws(num_workers=2) == reference
    # Resumed after 3 batches: fresh workers (which would restart mmengine's
    # per-worker seeds) take over the batches of other workers.
    assert draws(num_workers=2, skipped=12, num_batches=3) == reference[12:]


def test_seeded_index_is_its_int_and_pickles():
    import pickle
    index = SeededIndex(7, seed=123)
    assert index == 7 and list(range(10))[index] == 7
    again = pickle.loads(pickle.dumps(index))
    assert (int(again), again.seed) == (7, 123)


def test_derive_seed_is_a_pure_function_and_checks_keys():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    with pytest.raises(ValueError, match='non-negative'):
        derive_seed(0, -1)


def test_skip_leaves_out_indices_but_keeps_their_positions():
    """A mid-epoch resume (ResumableEpochBasedTrainLoop) leaves out the
    first indices of one pass; the rest keep the seeds of the full pass."""
    sampler = SeededSampler(list(range(6)), seed=3)
    full = [(int(i), i.seed) for i in sampler]
    sampler.leave_out(4)
    assert [(int(i), i.seed) for i in sampler] == full[4:]
    assert [(int(i), i.seed) for i in sampler] == full  # one pass only
    sampler.leave_out(6)
    assert list(sampler) == []
