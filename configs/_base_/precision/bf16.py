# bf16 autocast (GPU with bf16 support, or CPU: CPUAwareAmpOptimWrapper).
# bf16 has fp32's range, so the loss scale stays 1; on a GPU a step with an
# inf/nan gradient is still skipped.
# Switch: tools/train.py --precision {fp32,fp16,bf16}.
optim_wrapper = dict(
    type='CPUAwareAmpOptimWrapper', dtype='bfloat16', loss_scale=1.0)
