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


def test_complete_shard_has_no_skips(tmp_path):
    import warnings
    path = tmp_path / '00000.tar'
    write_shard(str(path), [good(i) for i in range(50)])
    ds = ImageTextShards(str(path), shuffle_shards=False)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert len(list(ds)) == 50
    assert ds.num_skipped == 0
