# Table 5, supervised pre-training "Image Classification" as a composition of
# the framework's parts: input = one full view, target = category embedding,
# decoder = attention pooling, posterior = Boltzmann (softmax CE).
_base_ = '../m3i_vitb.py'
model = dict(
    mixer=dict(mode='full', target_views=('different', 'different')),
    image_target=None,
    image_decoder=None,
    loss_balancer=None)
