# Table 5, supervised pre-training "Image Classification" as a composition of
# the framework's parts: input = one full view, target = category embedding,
# decoder = attention pooling, posterior = Boltzmann (softmax CE).
# 400 epochs, the ablation schedule of Sec. 4.2 (Tables 2 and 3).
_base_ = '../m3i_vitb_400e.py'
model = dict(
    mixer=dict(mode='full', target_views=('different', 'different')),
    image_target=None,
    image_decoder=None,
    loss_balancer=None)
