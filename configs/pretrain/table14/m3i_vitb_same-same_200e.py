# Table 14 (a): first target view same, second same; no
# labels, 200 epochs (see m3i_vitb_same-different_200e.py).
_base_ = './m3i_vitb_same-different_200e.py'
model = dict(mixer=dict(target_views=('same', 'same')))
