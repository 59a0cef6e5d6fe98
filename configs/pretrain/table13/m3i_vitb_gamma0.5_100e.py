# Table 13: γ = 0.5, 100 epochs (see m3i_vitb_gamma1.0_100e.py).
_base_ = './m3i_vitb_gamma1.0_100e.py'
model = dict(loss_balancer=dict(gamma=0.5))
