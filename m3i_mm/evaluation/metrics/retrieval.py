"""Image-text retrieval recall over a whole evaluation set."""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric

from m3i_mm.registry import METRICS


@METRICS.register_module()
class ImageTextRetrieval(BaseMetric):
    """Recall@K of image->text and text->image retrieval.

    Every data sample carries the embedding of its image (``image_embedding``)
    and of its paired caption (``text_embedding``); pair ``i`` is the only
    match of image ``i`` and text ``i``. Similarities are cosine.

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
        for sample in data_samples:
            missing = [k for k in ('image_embedding', 'text_embedding')
                       if k not in sample]
            if missing:
                raise KeyError(f'ImageTextRetrieval needs {missing} in each '
                               'data sample')
            self.results.append(
                (torch.as_tensor(sample['image_embedding']).float().cpu(),
                 torch.as_tensor(sample['text_embedding']).float().cpu()))

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        images = F.normalize(torch.stack([r[0] for r in results]), dim=-1)
        texts = F.normalize(torch.stack([r[1] for r in results]), dim=-1)
        sim = images @ texts.t()
        metrics = {}
        for name, scores in (('i2t', sim), ('t2i', sim.t())):
            # Rank of the true pair (the diagonal) in each row.
            rank = (scores > scores.diag().unsqueeze(1)).sum(1)
            for k in self.topk:
                metrics[f'{name}_R@{k}'] = 100.0 * float(
                    (rank < k).float().mean())
        return metrics
