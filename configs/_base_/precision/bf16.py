# bf16 autocast (GPU with bf16 support, or CPU). bf16 has fp32's range, so
# the loss scale stays 1; on a GPU a step with an inf/nan gradient is still
# skipped. Switch: tools/train.py --precision {fp32,fp16,bf16}.
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale=1.0)
