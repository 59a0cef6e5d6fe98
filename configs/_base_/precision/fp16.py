# Mixed precision as in the paper (appendix, Table 14: "FP16 loss scale"):
# fp16 autocast with dynamic loss scaling (torch GradScaler: a step with an
# inf/nan gradient is skipped and the scale halved). GPU only.
# Switch: tools/train.py --precision {fp32,fp16,bf16}.
optim_wrapper = dict(
    type='CPUAwareAmpOptimWrapper', dtype='float16', loss_scale='dynamic')
