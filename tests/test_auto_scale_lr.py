"""``tools/train.py --auto-scale-lr`` on real runs (forked from the
``zygote``): it scales the lr, or refuses a config without
``auto_scale_lr.base_batch_size`` (it was silently dropped)."""
import re

import pytest

from conftest import config_path, demo_loader_options

DEMOS = [
    config_path('pretrain', 'm3i_vit-tiny_demo.py'),
    config_path('pretrain', 'm3i_vit-tiny_multisource_demo.py'),
    config_path('downstream', 'linear-probe_vit-tiny_demo.py'),
]
MULTISOURCE_ROOTS = ('train_dataloader.dataset.datasets.0.data_root',
                     'train_dataloader.dataset.datasets.1.data_root')


def short_run(config, demo_root):
    """``--cfg-options`` for a one-iteration run of a demo config."""
    if 'multisource' in config:
        data = [f'{key}={demo_root}' for key in MULTISOURCE_ROOTS] + [
            'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False']
    else:
        data = demo_loader_options(demo_root, ('train_dataloader',))
    return ['--no-validate', '--cfg-options', *data,
            'train_dataloader.batch_size=4', 'train_cfg.max_iters=1',
            'default_hooks.logger.interval=1']


@pytest.mark.parametrize('config', DEMOS, ids=lambda p: p.split('/')[-1])
def test_config_without_base_batch_size_is_refused(zygote, demo_root,
                                                   tmp_path, config):
    """These configs have no ``auto_scale_lr``: the flag went into a dict
    that ``Config.setdefault`` did not store, and the run trained at the
    unscaled lr."""
    work = tmp_path / 'work'
    status, log = zygote.run(
        [config, '--work-dir', str(work), '--auto-scale-lr',
         *short_run(config, demo_root)], tmp_path / 'log.txt')
    assert status == 2, log[-2000:]
    assert re.search(r'error: .*--auto-scale-lr: .*'
                     + re.escape(config.split('/')[-1])
                     + r' has no auto_scale_lr\.base_batch_size', log), \
        log[-2000:]
    assert not work.exists()


def test_base_batch_size_from_cfg_options_scales_the_lr(zygote, demo_root,
                                                        tmp_path):
    """Batch 4 against a base of 64: lr 1e-3 * 4 / 64 in the first log."""
    status, log = zygote.run([
        DEMOS[0], '--work-dir', str(tmp_path / 'work'), '--auto-scale-lr',
        *short_run(DEMOS[0], demo_root), 'auto_scale_lr.base_batch_size=64'
    ], tmp_path / 'log.txt')
    assert status == 0, log[-3000:]
    assert 'LR is set based on batch size of 64 and the current batch size ' \
        'is 4. Scaling the original LR by 0.0625.' in log, log[-3000:]
    lr = float(re.search(r'Iter\(train\) \[1/1\].* lr: (\S+)', log).group(1))
    # LinearLR starts at 0.01 of the scaled 6.25e-5.
    assert lr == pytest.approx(1e-3 * 4 / 64 * 0.01, rel=1e-3)
