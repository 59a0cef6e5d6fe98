"""Image-text retrieval recall over a whole evaluation set."""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric

from m3i_mm.registry import METRICS


@METRICS.register_module()
class ImageTextRetrieval(BaseMetric):
    """Recall@K of image->text and text->image retrieval.

    Every data sample carries the embedding of its image (``image_embedding``,
    (D,)) and of its caption(s) (``text_embedding``, (D,) for one caption or
    (M, D) for M, e.g. Flickr30K's 5 per image); a sample's captions are the
    only matches of its image and its image the only match of each caption.
    Image -> text retrieval hits at K when any of the image's captions ranks
    within the top K of all captions; text -> image when the caption's image
    ranks within the top K of all images (the Flickr30K / COCO protocol of
    CLIP, BEiT-3). Similarities are cosine, computed in float64.
    ``mean_R@K`` is the mean of the two directions' R@K: the number the
    paper's App. B.4 gives for Flickr30K (89.1 against BEiT-3's 88.2 =
    (94.9 + 81.5) / 2).

    Ties are pessimistic: the rank of the true pair is the number of
    non-matching candidates scoring at least as high as the best match, so
    constant scores (e.g. a collapsed model, or all-zero embeddings) give
    ``R@K = 100 * min(K, N) / N`` rather than 100 for one caption per
    image. A single pair always has rank 0.

    Args:
        topk (Sequence[int]): The K of Recall@K. Defaults to (1, 5, 10).
        collect_device (str): Device to gather results on.
        prefix (str, optional): Metric name prefix. Defaults to
            ``'retrieval'``.
    """
    default_prefix: Optional[str] = 'retrieval'

    def __init__(self,
                 topk: Sequence[int] = (1, 5, 10),
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(topk)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep each sample's two embeddings.

        Raises:
            KeyError: A sample lacks an embedding (named).
            ValueError: An embedding holds NaN or inf (named, with the
                sample's ``img_path`` where it has one), or
                ``text_embedding`` is neither (D,) nor (M >= 1, D).
        """
        for sample in data_samples:
            missing = [k for k in ('image_embedding', 'text_embedding')
                       if k not in sample]
            if missing:
                raise KeyError(f'ImageTextRetrieval needs {missing} in each '
                               'data sample')
            pair = []
            for key in ('image_embedding', 'text_embedding'):
                value = torch.as_tensor(sample[key]).double().cpu()
                if not torch.isfinite(value).all():
                    where = sample.get('img_path', len(self.results))
                    raise ValueError(f'ImageTextRetrieval: {key} of sample '
                                     f'{where} is not finite: {value}')
                pair.append(value)
            if pair[1].ndim == 1:
                pair[1] = pair[1].unsqueeze(0)
            if pair[1].ndim != 2 or len(pair[1]) == 0:
                where = sample.get('img_path', len(self.results))
                raise ValueError(
                    f'ImageTextRetrieval: text_embedding of sample {where} '
                    'must be (D,) or (M, D) with M >= 1, got shape '
                    f'{tuple(pair[1].shape)}')
            self.results.append(tuple(pair))

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        """Recall@K in percent, ``{i2t,t2i,mean}_R@K``.

        Raises:
            ValueError: No sample was processed.
        """
        if not results:
            raise ValueError('ImageTextRetrieval: no samples to evaluate')
        images = F.normalize(torch.stack([r[0] for r in results]), dim=-1)
        texts = F.normalize(torch.cat([r[1] for r in results]), dim=-1)
        # owner[t]: index of the image caption t belongs to
        owner = torch.cat([
            torch.full((len(r[1]), ), i, dtype=torch.long)
            for i, r in enumerate(results)
        ])
        sim = images @ texts.t()  # (N images, T captions)
        match = owner.unsqueeze(0) == torch.arange(len(images)).unsqueeze(1)
        # Rank of the best match: non-matching candidates scoring at least
        # as high (pessimistic ties).
        best = sim.masked_fill(~match, float('-inf')).amax(1, keepdim=True)
        ranks = {
            'i2t': ((sim >= best) & ~match).sum(1),
            't2i': (sim >= sim[owner, torch.arange(len(owner))]).sum(0) - 1,
        }
        metrics = {}
        for name, rank in ranks.items():
            for k in self.topk:
                metrics[f'{name}_R@{k}'] = 100.0 * float(
                    (rank < k).float().mean())
        for k in self.topk:
            metrics[f'mean_R@{k}'] = (metrics[f'i2t_R@{k}'] +
                                      metrics[f't2i_R@{k}']) / 2
        return metrics
