# Table 2 (c) / Table 5, "Global Distillation" (intra-view, full input):
# input = view 1, target = the momentum encoder's global feature of the same
# view 1, Boltzmann posterior over the batch's targets (Table 5's form).
_base_ = './instance-discrimination_vitb.py'
model = dict(mixer=dict(target_views=('same', 'same')))
