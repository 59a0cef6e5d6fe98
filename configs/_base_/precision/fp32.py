# Full precision (fp32). Switch: tools/train.py --precision {fp32,fp16,bf16}.
optim_wrapper = dict(type='OptimWrapper')
