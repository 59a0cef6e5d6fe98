# CLIP-like image-text pre-training with CLIP's symmetric loss: the mean of
# the image -> text and the text -> image cross-entropies (each caption
# picks its image among the batch's, all ranks).
_base_ = './clip_vitb_yfcc15m.py'
model = dict(text_symmetric=True)
