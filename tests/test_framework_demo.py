"""benchmarks/framework_demo.py end to end at a toy budget: instances
adapted to the demo ViT, pre-trained on digits 0-4 through mmengine's
Runner, probed on both splits; the table, results.json and the PNG."""
import json
import os.path as osp
import sys

import pytest
from mmengine.config import Config

from conftest import REPO

sys.path.insert(0, osp.join(REPO, 'benchmarks'))
import framework_demo  # noqa: E402


def test_every_instance_adapts_to_the_demo_model():
    demo = Config.fromfile(framework_demo.DEMO_CFG).model.to_dict()
    specs = framework_demo.instances()
    assert list(specs)[:4] == ['M3I', 'M3I fixed λ', 'w/o mix',
                               'w/o mix fixed λ']
    assert 'mim-pixel' in specs and not any('clip' in n for n in specs)
    for name, spec in specs.items():
        model = Config.fromfile(spec['config']).model.to_dict()
        cfg = framework_demo.demo_model_cfg(model, demo, teacher='t.pth',
                                            momentum=0.02)
        assert cfg['backbone']['arch'] == demo['backbone']['arch'], name
        assert cfg['mixer']['patch_size'] == 4, name
        assert cfg['mixer'].get('mode') == model['mixer'].get('mode'), name
        if (cfg.get('image_target') or {}).get('type') == \
                'FrozenImageTarget':
            assert cfg['image_target']['checkpoint'] == 't.pth'
        if (cfg.get('image_target') or {}).get('type') == \
                'MomentumImageTarget':
            assert cfg['image_target']['momentum'] == 0.02, name
    # Table 2 (k) is the paper's stop-gradient row; SiameseIM's collapse
    # guard (its --neg_weight 0.02) runs as its own named variant.
    for name, weight in (('siamese-im-feature', 0.0),
                         ('siamese-im-feature_decorrelation', 0.02)):
        sim = Config.fromfile(specs[name]['config']).model
        assert framework_demo.demo_model_cfg(sim.to_dict(), demo)[
            'image_posterior'].get('decorrelation_weight', 0.0) == weight
    # --model-options reach every run's model (the README's controls).
    args = framework_demo.parse_args([
        '--model-options', 'image_posterior.decorrelation_weight=0'])
    cfg = framework_demo.run_config(
        'siamese-im-feature_decorrelation',
        specs['siamese-im-feature_decorrelation'], 0, args, None)
    assert cfg.model.image_posterior.decorrelation_weight == 0
    assert cfg.model.image_posterior.type == 'GaussianPosterior'
    with pytest.raises(ValueError, match='teacher'):
        framework_demo.demo_model_cfg(
            Config.fromfile(specs['dense-distillation_frozen-teacher']
                            ['config']).model.to_dict(), demo)


def test_framework_demo_runs_and_reports(demo_root, tmp_path, capsys):
    work = tmp_path / 'fw'
    table = framework_demo.main([
        '--iters', '2', '--seeds', '1', '--instances', 'M3I fixed λ',
        'mim-pixel', '--batch-size', '8', '--workers', '0',
        '--probe-limit', '60', '--probe-folds', '2',
        '--work-dir', str(work), '--data-root', demo_root])
    assert list(table) == ['random init', 'M3I fixed λ', 'mim-pixel']
    for row in table.values():
        assert set(row) == set(framework_demo.METRICS) | {'seconds', 'terms'}
        for metric in framework_demo.METRICS[:4]:
            assert 0.0 <= row[metric]['mean'] <= 100.0
            assert row[metric]['spread'] == 0.0  # one seed
        assert row['eff rank']['mean'] > 1.0
    # The last iterations' training terms, λ and the raw cross-entropy.
    assert table['random init']['terms'] == {}
    assert set(table['mim-pixel']['terms']) == {'loss_img_first'}
    m3i = table['M3I fixed λ']['terms']
    assert {'loss_img_first', 'loss_img_second', 'loss_cls', 'lambda_sp',
            'ce_cls'} <= set(m3i)
    assert m3i['lambda_sp'] == 1.0 and m3i['ce_cls'] == m3i['loss_cls'] > 0
    out = capsys.readouterr().out
    assert 'training terms at the end' in out
    header = next(line for line in out.splitlines()
                  if line.startswith('instance'))
    assert all(m in header for m in framework_demo.METRICS)
    assert (work / 'framework_demo.png').read_bytes()[:4] == b'\x89PNG'
    saved = json.loads((work / 'results.json').read_text())
    assert list(saved['table']) == list(table)
    # Pre-trained on digits 0-4 only: the runner's data set is that subset.
    cfg = framework_demo.run_config(
        'M3I', framework_demo.instances()['M3I'], 0,
        framework_demo.parse_args(['--data-root', demo_root]), None)
    labels = {int(line.split()[-1]) for i, line in enumerate(open(osp.join(
        demo_root, 'meta', 'train.txt'))) if i in
        set(cfg.train_dataloader.dataset.indices)}
    assert labels == {0, 1, 2, 3, 4}


def fake_results(path, names, value=50.0, **settings):
    """A results.json of ``names`` (two seeds), as main writes it."""
    args = vars(framework_demo.parse_args([]))
    args.update(settings)

    def result(seed):
        return dict({m: value + seed for m in framework_demo.METRICS},
                    seconds=1.0, terms={'loss_img_first': 0.5 + seed})
    runs = {name: [result(0), result(1)] for name in names}
    path.write_text(json.dumps(dict(args=args, table={}, runs=runs)))
    return str(path)


def test_combine_separate_runs(tmp_path, capsys):
    a = fake_results(tmp_path / 'a.json',
                     ['random init', 'M3I', 'mim-pixel'])
    b = fake_results(tmp_path / 'b.json',
                     ['random init', 'M3I', 'siamese-im-pixel',
                      'auto-encoder'])
    work = tmp_path / 'both'
    table = framework_demo.main(['--combine', a, b, '--work-dir', str(work)])
    # Random init first, then the order of instances(); duplicates once.
    assert list(table) == ['random init', 'M3I', 'auto-encoder',
                           'mim-pixel', 'siamese-im-pixel']
    assert table['mim-pixel']['transfer k-NN'] == dict(mean=50.5,
                                                       spread=0.5)
    saved = json.loads((work / 'results.json').read_text())
    assert saved['args']['combined'] == [a, b]
    assert saved['args']['instances'] == list(table)[1:]
    assert len(saved['runs']['M3I']) == 2
    assert (work / 'framework_demo.png').read_bytes()[:4] == b'\x89PNG'
    assert '400 it' in capsys.readouterr().out
    # Runs of other settings, or of other code, do not combine.
    c = fake_results(tmp_path / 'c.json', ['mim-pixel'], iters=200)
    with pytest.raises(ValueError, match=r'c.json: iters=200'):
        framework_demo.combine_runs([a, c])
    d = fake_results(tmp_path / 'd.json', ['M3I'], value=51.0)
    with pytest.raises(ValueError, match=r"'M3I' is in .*a.json and "
                       r'.*d.json with different results'):
        framework_demo.combine_runs([a, d])
    # Files that are not whole results: named, never half-combined.
    one_seed = fake_results(tmp_path / 'e.json', ['M3I'])
    saved = json.loads(open(one_seed).read())
    saved['runs']['M3I'] = saved['runs']['M3I'][:1]
    open(one_seed, 'w').write(json.dumps(saved))
    with pytest.raises(ValueError, match=r"e.json: 'M3I' has not the 2 "
                       'results of args.seeds'):
        framework_demo.combine_runs([a, one_seed])
    del saved['runs']['M3I'][0]['eff rank']
    saved['runs']['M3I'] *= 2
    open(one_seed, 'w').write(json.dumps(saved))
    with pytest.raises(ValueError, match=r"e.json: 'M3I' seed 0 lacks "
                       r"\['eff rank'\]"):
        framework_demo.combine_runs([a, one_seed])
    (tmp_path / 'f.json').write_text('{"args": {}')
    with pytest.raises(ValueError, match='f.json: not a readable'):
        framework_demo.combine_runs([a, str(tmp_path / 'f.json')])
    (tmp_path / 'g.json').write_text('[]')
    with pytest.raises(ValueError, match='g.json: a results.json has'):
        framework_demo.combine_runs([str(tmp_path / 'g.json'), a])


def test_shorten_iter_schedule_keeps_the_shape():
    from m3i_mm.utils import shorten_iter_schedule
    cfg = Config.fromfile(framework_demo.DEMO_CFG)
    shorten_iter_schedule(cfg, 200)
    assert cfg.train_cfg.max_iters == 200
    assert [(s['type'], s['begin'], s['end']) for s in cfg.param_scheduler] \
        == [('LinearLR', 0, 50), ('CosineAnnealingLR', 50, 200)]
    shorten_iter_schedule(cfg, 20)  # the cosine part starts after 20
    assert [(s['type'], s['end']) for s in cfg.param_scheduler] == [
        ('LinearLR', 20)]
    with pytest.raises(ValueError, match='iters must be >= 1, got 0'):
        shorten_iter_schedule(cfg, 0)
