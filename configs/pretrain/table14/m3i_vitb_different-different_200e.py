# Table 14 (b): first target view different, second different; no
# labels, 200 epochs (see m3i_vitb_same-different_200e.py).
_base_ = './m3i_vitb_same-different_200e.py'
model = dict(mixer=dict(target_views=('different', 'different')))
