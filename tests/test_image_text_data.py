"""Image-text data: annotation files and streamed WebDataset tar shards."""
import io
import json
import os.path as osp

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from m3i_mm.datasets.image_text import (ImageTextDataset, ImageTextShards,
                                        expand_shards, write_shard)


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, 'PNG')
    return buf.getvalue()


def good(i: int):
    return f'{i:05d}', {'png': png_bytes(i % 256), 'txt': f'digit {i}'.encode()}


def test_shards_stream_pairs_and_skip_corrupt_samples(tmp_path):
    write_shard(str(tmp_path / '00000.tar'), [
        good(0),
        ('00001', {'png': b'not an image', 'txt': b'broken'}),
        good(2),
        ('00003', {'png': png_bytes(30)}),  # no caption
        ('00004', {'jpg': png_bytes(40),
                   'json': json.dumps({'caption': 'from json'}).encode()}),
    ])
    ds = ImageTextShards(str(tmp_path / '*.tar'), shuffle_shards=False)
    with pytest.warns(UserWarning) as record:
        samples = list(ds)
    assert [s['caption'] for s in samples] == ['digit 0', 'digit 2',
                                               'from json']
    assert samples[1]['img'].shape == (8, 8, 3)
    assert samples[1]['img'][0, 0, 0] == 2
    assert ds.num_skipped == 2
    messages = ' '.join(str(w.message) for w in record)
    assert '00001' in messages and '00003' in messages
    assert '00000.tar' in messages


def test_truncated_shard_keeps_what_was_read(tmp_path):
    path = tmp_path / '00000.tar'
    write_shard(str(path), [good(i) for i in range(4)])
    data = path.read_bytes()
    # cut in the middle: at the header of 00002.txt (512-byte blocks)
    path.write_bytes(data[:len(data) // 2])
    ds = ImageTextShards(str(path), shuffle_shards=False)
    with pytest.warns(UserWarning, match='00000.tar') as record:
        samples = list(ds)
    assert len(samples) == 2
    # the truncation, and sample 00002 whose caption was cut off
    assert ds.num_skipped == 2
    assert 'truncated' in str(record[0].message)
    assert '00002' in str(record[1].message)


def test_shards_are_split_over_workers(tmp_path):
    for shard in range(4):
        write_shard(str(tmp_path / f'{shard:05d}.tar'),
                    [good(10 * shard + i) for i in range(3)])
    ds = ImageTextShards(
        str(tmp_path / '{00000..00003}.tar'),
        pipeline=[dict(type='mmpretrain.PackInputs',
                       meta_keys=['caption'])])
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    captions = [s['data_samples'].caption for s in loader]
    # Every pair exactly once across the two workers.
    assert sorted(captions) == sorted(
        f'digit {10 * s + i}' for s in range(4) for i in range(3))


def test_expand_shards_and_missing_shards(tmp_path):
    assert expand_shards('a/{008..011}.tar') == [
        'a/008.tar', 'a/009.tar', 'a/010.tar', 'a/011.tar'
    ]
    with pytest.raises(FileNotFoundError, match='missing shard'):
        ImageTextShards(str(tmp_path / '{0..1}.tar'))
    with pytest.raises(FileNotFoundError, match='no shard matches'):
        expand_shards(str(tmp_path / '*.tar'))


def test_annotation_files(tmp_path):
    (tmp_path / 'pairs.jsonl').write_text(
        json.dumps({'image': 'a.png', 'caption': 'a zero'}) + '\n' +
        json.dumps({'image': 'b.png', 'caption': 'a one'}) + '\n')
    (tmp_path / 'pairs.tsv').write_text('a.png\ta zero\nb.png\ta one\n')
    for name in ('pairs.jsonl', 'pairs.tsv'):
        ds = ImageTextDataset(
            ann_file=name, data_root=str(tmp_path), data_prefix='imgs')
        assert len(ds) == 2
        info = ds.get_data_info(1)
        assert info['caption'] == 'a one'
        assert info['img_path'] == osp.join(str(tmp_path), 'imgs', 'b.png')
    (tmp_path / 'bad.jsonl').write_text(json.dumps({'image': 'a.png'}) + '\n')
    with pytest.raises(KeyError, match=r'bad.jsonl, line 1.*caption'):
        ImageTextDataset(ann_file='bad.jsonl', data_root=str(tmp_path))


def member_header_offsets(path):
    import tarfile
    with tarfile.open(path) as tar:
        return [m.offset for m in tar.getmembers()]


@pytest.mark.parametrize('inside', [0, 100])
def test_shard_truncated_at_a_member_header_is_counted(tmp_path, inside):
    """Cut exactly at (or 100 bytes into) the header of sample 30's first
    member: tarfile saw a clean end, 30 of 50 samples and no warning."""
    path = tmp_path / '00007.tar'
    write_shard(str(path), [good(i) for i in range(50)])
    cut = member_header_offsets(path)[30 * 2] + inside  # 2 members a sample
    path.write_bytes(path.read_bytes()[:cut])
    ds = ImageTextShards(str(path), shuffle_shards=False)
    with pytest.warns(UserWarning, match=r'00007\.tar.*truncated'):
        samples = list(ds)
    assert len(samples) == 30
    assert ds.num_skipped == 1


def test_no_shard_is_named(tmp_path):
    """An empty list or an empty brace range made a stream of no sample."""
    for shards in ([], '{00005..00003}.tar'):
        with pytest.raises(ValueError, match=r'no shard in .*00003|no shard'
                           r' in \[\]'):
            ImageTextShards(shards, data_root=str(tmp_path))


def test_complete_shard_has_no_skips(tmp_path):
    import warnings
    path = tmp_path / '00000.tar'
    write_shard(str(path), [good(i) for i in range(50)])
    ds = ImageTextShards(str(path), shuffle_shards=False)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert len(list(ds)) == 50
    assert ds.num_skipped == 0


def one_caption_shards(folder, num_shards: int) -> str:
    for shard in range(num_shards):
        write_shard(str(folder / f'{shard:05d}.tar'), [good(shard)])
    return str(folder / ('{00000..%05d}.tar' % (num_shards - 1)))


def test_shard_order_changes_every_pass_and_continues_after_resume(tmp_path):
    # Workers restarted every pass (persistent_workers=False) iterate a fresh
    # copy of the dataset: the epoch must come from the main process, where
    # ResumableRandomnessHook's SeededSampler forwards mmengine's set_epoch.
    from types import SimpleNamespace

    from mmengine.runner.loops import _InfiniteDataloaderIterator

    from m3i_mm.engine.hooks import ResumableRandomnessHook
    shards = one_caption_shards(tmp_path, 8)

    def stream():
        ds = ImageTextShards(shards, seed=0)
        loader = DataLoader(ds, batch_size=1, num_workers=2,
                            persistent_workers=False,
                            collate_fn=lambda b: b[0]['caption'])
        ResumableRandomnessHook().before_train(SimpleNamespace(
            train_loop=SimpleNamespace(dataloader=loader), seed=0, iter=0))
        return _InfiniteDataloaderIterator(loader)

    it = stream()
    captions = [next(it) for _ in range(24)]
    passes = [captions[i:i + 8] for i in (0, 8, 16)]
    assert all(sorted(p) == sorted(passes[0]) for p in passes)
    assert passes[0] != passes[1] and passes[1] != passes[2]
    # Resumed after 11 batches (mid-pass 2), as mmengine's loop does.
    resumed = stream()
    resumed.skip_iter(11)
    assert [next(resumed) for _ in range(13)] == captions[11:]


def test_multisource_stream_changes_with_the_epoch(tmp_path):
    from itertools import islice

    from m3i_mm.datasets import MultiSourceDataset
    stream = MultiSourceDataset(sources=[
        dict(type='ImageTextShards', shards=one_caption_shards(tmp_path, 8)),
        dict(type='ImageTextShards', shards=str(tmp_path / '0000[0-3].tar'),
             shuffle_shards=False)
    ])

    def take(epoch):
        stream.set_epoch(epoch)
        return [s['caption'] for s in islice(iter(stream), 40)]

    assert take(0) == take(0)  # a pure function of the epoch
    assert take(0) != take(1)
    # Iterating in the main process advances the epoch, as a new pass.
    stream.set_epoch(0)
    first = [s['caption'] for s in islice(iter(stream), 40)]
    second = [s['caption'] for s in islice(iter(stream), 40)]
    assert first != second


def test_streams_have_a_nominal_length_for_the_runner(tmp_path):
    # mmengine's Runner takes len(train_dataloader) (param schedulers'
    # epoch_length, LoggerHook, LogProcessor): an unsized stream failed at
    # its first iteration with "object of type ... has no len()".
    from m3i_mm.datasets import MultiSourceDataset
    shards = one_caption_shards(tmp_path, 4)
    unsized = [ImageTextShards(shards),
               MultiSourceDataset(sources=[dict(type='ImageTextShards',
                                                shards=shards)])]
    for dataset in unsized:
        with pytest.raises(TypeError, match=type(dataset).__name__ +
                           r'.*has no length.*Set `length`'):
            len(DataLoader(dataset, batch_size=4))
    assert len(DataLoader(ImageTextShards(shards, length=10),
                          batch_size=4)) == 3
    stream = MultiSourceDataset(
        sources=[dict(type='ImageTextShards', shards=shards)], length=10)
    assert len(stream) == 10
    # A pass is the nominal epoch: 10 samples over the 2 workers, then the
    # epoch ends (epoch-based loops stop, the infinite iterator restarts).
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    assert len(list(loader)) == 10
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match='length must be a positive'):
            ImageTextShards(shards, length=bad)


def test_source_without_shards_for_a_worker_is_an_error(tmp_path):
    # 1 shard, 2 worker slots: worker 1's shard stream is empty and was
    # restarted forever (the DataLoader timeout catches the old spin).
    from m3i_mm.datasets import MultiSourceDataset
    stream = MultiSourceDataset(sources=[
        dict(type='ImageTextShards', shards=one_caption_shards(tmp_path, 1))
    ])
    loader = DataLoader(stream, batch_size=None, num_workers=2, timeout=60)
    with pytest.raises(ValueError,
                       match=r'ImageTextShards.*00000.tar.*yielded no sample'
                       r'.*worker slot 1 of 2.*1 shards for 2 worker slots'):
        list(loader)


@pytest.mark.parametrize('caption', [b'', b'  \n', b'{"caption": " "}'])
def test_empty_caption_is_skipped_and_named(tmp_path, caption):
    """An empty (or blank) caption became a text target ``''``."""
    ext = 'json' if caption.startswith(b'{') else 'txt'
    write_shard(str(tmp_path / '00000.tar'), [
        good(0), ('00001', {'png': png_bytes(1), ext: caption}), good(2)])
    ds = ImageTextShards(str(tmp_path / '00000.tar'), shuffle_shards=False)
    with pytest.warns(UserWarning, match=r'sample 00001 of .*00000\.tar: '
                      r'empty caption \(1 skipped so far\)'):
        samples = list(ds)
    assert [s['caption'] for s in samples] == ['digit 0', 'digit 2']
    assert ds.num_skipped == 1


def test_adjacent_samples_with_one_key_are_skipped_and_named(tmp_path):
    """Two adjacent samples ``00001`` merged into one: the second's image
    and caption replaced the first's, silently."""
    write_shard(str(tmp_path / '00000.tar'), [
        good(0), ('00001', {'png': png_bytes(1), 'txt': b'first'}),
        ('00001', {'png': png_bytes(9), 'txt': b'second'}), good(2)])
    ds = ImageTextShards(str(tmp_path / '00000.tar'), shuffle_shards=False)
    with pytest.warns(UserWarning, match=r'sample 00001 of .*00000\.tar: '
                      r'duplicate key, member 00001\.png more than once'):
        samples = list(ds)
    assert [s['caption'] for s in samples] == ['digit 0', 'digit 2']
    assert ds.num_skipped == 1


@pytest.mark.parametrize('name,line', [
    ('pairs.jsonl', json.dumps({'image': 'b.png', 'caption': ' '})),
    ('pairs.tsv', 'b.png\t'),
])
def test_annotation_file_empty_caption_is_named(tmp_path, name, line):
    """An empty caption of an annotation file became a text target ``''``
    (the shards skip such samples; a file's line is named, as its other
    errors)."""
    first = (json.dumps({'image': 'a.png', 'caption': 'a zero'})
             if name.endswith('.jsonl') else 'a.png\ta zero')
    (tmp_path / name).write_text(f'{first}\n{line}\n')
    with pytest.raises(ValueError, match=rf'{name}, line 2: empty caption'):
        ImageTextDataset(ann_file=name, data_root=str(tmp_path))
