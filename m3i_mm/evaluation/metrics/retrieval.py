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
    match of image ``i`` and text ``i``. Similarities are cosine, computed in
    float64.

    Ties are pessimistic: the rank of the true pair is the number of other
    candidates scoring at least as high, so constant scores (e.g. a collapsed
    model, or all-zero embeddings) give ``R@K = 100 * min(K, N) / N`` rather
    than 100. A single pair always has rank 0.

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
                sample's ``img_path`` where it has one).
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
            self.results.append(tuple(pair))

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        """Recall@K in percent, ``{i2t,t2i}_R@K``.

        Raises:
            ValueError: No sample was processed.
        """
        if not results:
            raise ValueError('ImageTextRetrieval: no samples to evaluate')
        images = F.normalize(torch.stack([r[0] for r in results]), dim=-1)
        texts = F.normalize(torch.stack([r[1] for r in results]), dim=-1)
        sim = images @ texts.t()
        metrics = {}
        for name, scores in (('i2t', sim), ('t2i', sim.t())):
            # Rank of the true pair (the diagonal) in each row: the other
            # candidates scoring at least as high (pessimistic ties).
            rank = (scores >= scores.diag().unsqueeze(1)).sum(1) - 1
            for k in self.topk:
                metrics[f'{name}_R@{k}'] = 100.0 * float(
                    (rank < k).float().mean())
        return metrics
