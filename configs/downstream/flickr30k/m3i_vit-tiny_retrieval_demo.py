# Demo twin of m3i_internimage-h_zero-shot-retrieval_flickr30k.py: the demo
# multi-source M3I (text head + text target encoder) retrieves among the 359
# demo val digits and their 4 captions each, written in Karpathy's layout by
#   python -c "from m3i_mm.datasets import materialize_demo_digits_karpathy as m; m('data/demo_digits_karpathy')"
# then
#   python tools/test.py configs/downstream/flickr30k/m3i_vit-tiny_retrieval_demo.py CHECKPOINT
_base_ = ['../../pretrain/m3i_vit-tiny_multisource_demo.py']
test_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        _delete_=True,
        type='mmpretrain.Flickr30kRetrieval',
        data_root='data/demo_digits_karpathy',
        ann_file='annotations/dataset_demo_digits.json',
        data_prefix='images',
        split='test',
        test_mode=True,
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='PackInputs', meta_keys=['image_id', 'text']),
        ]))
test_evaluator = dict(_delete_=True, type='ImageTextRetrieval',
                      topk=(1, 5, 10))
