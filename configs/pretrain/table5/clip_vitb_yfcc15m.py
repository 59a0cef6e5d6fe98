# Table 5, "Contrastive Language-Image Pre-training" (CLIP-like) as a
# composition of the framework's parts: input = one full view, target = the
# paired caption's embedding (text encoder trained jointly), decoder =
# attention pooling, Boltzmann posterior over the captions of the whole
# batch (all ranks) with a learned temperature. This is the paper's
# image -> text form; clip-symmetric_vitb_yfcc15m.py adds CLIP's
# text -> image term.
_base_ = '../m3i_vitb_yfcc15m.py'
model = dict(
    mixer=dict(mode='full', target_views=('different', 'different')),
    image_target=None,
    image_decoder=None,
    loss_balancer=None)
