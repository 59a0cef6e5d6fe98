# M3I pre-training of ViT-L/16 on ImageNet-1k (paper Table 15): 400 epochs,
# the schedule of m3i_vitb_400e.py. The paper gives no separate ViT-L column:
# decoder width 1024 / FFN 4096 (as for InternImage-H) and drop path 0.2 are
# our choices.
_base_ = './m3i_vitb_400e.py'
model = dict(
    backbone=dict(arch='l', drop_path_rate=0.2),
    image_decoder=dict(
        in_channels=1024, out_channels=1024, embed_dims=1024, num_heads=16),
    category_head=dict(in_channels=1024, out_channels=1024, num_heads=16),
    category_embedding=dict(embed_dims=1024))
