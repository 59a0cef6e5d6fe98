"""Frozen-feature evaluation: converged linear probe, k-NN, diagnostics.

Every probe here is trained to convergence (or needs no training), so a
comparison of backbones does not depend on a probe's optimisation budget:

* :func:`logistic_probe`: standardised multinomial logistic regression
  (scikit-learn ``StandardScaler`` + ``LogisticRegression``, L-BFGS to
  convergence). The regularisation ``C`` is chosen by stratified 5-fold CV
  on the training features over :data:`PROBE_CS` (as CLIP's linear-probe
  protocol, Radford et al. 2021, appendix A.3, sweeps ``C`` on held-out
  training data), or fixed by the caller. On the demo's random-init ViT
  the CV picks ``C`` = 10-100 and gives 85-87 % top-1 where scikit-learn's
  default ``C`` = 1 gives 82 %: a fixed ``C`` understates weak features.
* :func:`knn_accuracy`: DINO's weighted k-NN (Caron et al. 2021, Sec. 4.1 /
  ``eval_knn.py``): cosine similarity, the k = 20 nearest training features
  vote with weight ``exp(s / T)``, T = 0.07.
* :func:`feature_std` and :func:`effective_rank`: collapse diagnostics of a
  feature matrix.

Features are the mean of the backbone's patch tokens
(:func:`extract_features`).
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

PROBE_CS = (0.1, 1.0, 10.0, 100.0)
PROBE_MAX_ITER = 10000


def _check_split_shapes(train_x, train_y, test_x, test_y) -> None:
    if train_x.ndim != 2 or test_x.ndim != 2:
        raise ValueError('features must be (N, D) matrices, got '
                         f'{tuple(train_x.shape)} and {tuple(test_x.shape)}')
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f'train features have {train_x.shape[1]} dims, '
                         f'test features {test_x.shape[1]}')
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError('one label per feature row is needed: '
                         f'{len(train_x)} vs {len(train_y)} (train), '
                         f'{len(test_x)} vs {len(test_y)} (test)')


def logistic_probe(train_x: np.ndarray,
                   train_y: np.ndarray,
                   test_x: np.ndarray,
                   test_y: np.ndarray,
                   C: Optional[float] = None,
                   cs: Sequence[float] = PROBE_CS,
                   folds: int = 5,
                   max_iter: int = PROBE_MAX_ITER) -> Tuple[float, float]:
    """Top-1 of a converged, standardised multinomial logistic regression.

    The features are standardised with the training set's mean and std and
    a multinomial logistic regression (L2, inverse strength ``C``) is fit
    with L-BFGS until its tolerance is met (``max_iter`` is a bound, not a
    budget). Without ``C``, it is chosen among ``cs`` by stratified
    ``folds``-fold cross-validation (accuracy) on the training set, then the
    model is refit on the whole training set.

    Args:
        train_x (np.ndarray): (N, D) training features.
        train_y (np.ndarray): (N,) integer labels.
        test_x (np.ndarray): (M, D) test features.
        test_y (np.ndarray): (M,) integer labels.
        C (float, optional): Fixed inverse L2 strength; ``None``: inner CV.
        cs (sequence of float): Candidate values of ``C`` for the CV.
        folds (int): Inner cross-validation folds.
        max_iter (int): L-BFGS iteration bound.

    Returns:
        tuple[float, float]: Top-1 accuracy on the test set in percent and
        the ``C`` used.

    Raises:
        ValueError: On mismatched shapes.
        RuntimeError: If L-BFGS did not converge within ``max_iter``.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    _check_split_shapes(train_x, train_y, test_x, test_y)
    if C is None:
        head = LogisticRegressionCV(Cs=list(cs), cv=folds, max_iter=max_iter,
                                    scoring='accuracy')
    else:
        head = LogisticRegression(C=C, max_iter=max_iter)
    probe = make_pipeline(StandardScaler(), head)
    with warnings.catch_warnings():
        warnings.simplefilter('error', ConvergenceWarning)
        try:
            probe.fit(train_x, np.asarray(train_y))
        except ConvergenceWarning as err:
            raise RuntimeError(
                f'logistic probe did not converge in {max_iter} L-BFGS '
                f'iterations: {err}') from err
    top1 = float((probe.predict(test_x) == np.asarray(test_y)).mean()) * 100
    return top1, float(C if C is not None else head.C_[0])


def knn_accuracy(train_x: torch.Tensor,
                 train_y: torch.Tensor,
                 test_x: torch.Tensor,
                 test_y: torch.Tensor,
                 k: int = 20,
                 temperature: float = 0.07) -> float:
    """Top-1 of DINO's weighted k-NN classifier.

    Each test feature's ``k`` most cosine-similar training features vote
    for their labels with weight ``exp(similarity / temperature)``; the
    class with the largest total wins (ties: the smallest label).

    Args:
        train_x (Tensor): (N, D) training features.
        train_y (Tensor): (N,) integer labels.
        test_x (Tensor): (M, D) test features.
        test_y (Tensor): (M,) integer labels.
        k (int): Neighbours; at most N. Defaults to 20 (DINO).
        temperature (float): Vote temperature. Defaults to 0.07 (DINO).

    Returns:
        float: Top-1 accuracy in percent.

    Raises:
        ValueError: On mismatched shapes or ``k`` outside 1..N.
    """
    train_x, test_x = torch.as_tensor(train_x), torch.as_tensor(test_x)
    train_y = torch.as_tensor(train_y).long()
    test_y = torch.as_tensor(test_y).long()
    _check_split_shapes(train_x, train_y, test_x, test_y)
    if not 1 <= k <= len(train_x):
        raise ValueError(f'k must be in 1..{len(train_x)}, got {k}')
    sims = F.normalize(test_x.double(), dim=1) @ F.normalize(
        train_x.double(), dim=1).t()
    top, idx = sims.topk(k, dim=1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    votes = torch.zeros(len(test_x), num_classes, dtype=torch.float64)
    votes.scatter_add_(1, train_y[idx], (top / temperature).exp())
    return float((votes.argmax(1) == test_y).double().mean()) * 100


def feature_std(x: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of features.

    Near 0 means collapse to a constant (as in SimSiam's and VICReg's
    collapse check); computed on l2-normalised rows it is scale-free.
    Here the raw features are used.

    Args:
        x (Tensor): (N, D) features, N >= 2.

    Returns:
        float: ``mean_d std_n x[n, d]`` (population std).
    """
    x = torch.as_tensor(x).double()
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f'need (N >= 2, D) features, got {tuple(x.shape)}')
    return float(x.std(dim=0, correction=0).mean())


def effective_rank(x: torch.Tensor, center: bool = True) -> float:
    """Effective rank of a feature matrix (Roy & Vetterli, 2007).

    ``exp(H(p))`` with ``p = s / sum(s)`` the normalised singular values
    ``s`` of ``x`` (of its column-centred copy with ``center``), ``H`` the
    Shannon entropy (nats; 0 log 0 = 0). Between 1 (rank one) and
    ``min(N, D)`` (all singular values equal); RankMe (Garrido et al. 2023)
    uses it to detect dimensional collapse.

    Args:
        x (Tensor): (N, D) features.
        center (bool): Subtract the column means first. Defaults to True.

    Returns:
        float: The effective rank.

    Raises:
        ValueError: For a non-matrix or an all-zero matrix.
    """
    x = torch.as_tensor(x).double()
    if x.ndim != 2:
        raise ValueError(f'need (N, D) features, got {tuple(x.shape)}')
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if s.sum() <= 0:
        raise ValueError('effective rank of an all-zero (or constant, '
                         'centred) matrix is undefined')
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def build_backbone(backbone: dict,
                   checkpoint: Optional[str] = None,
                   prefix: str = 'backbone.') -> torch.nn.Module:
    """A frozen, eval-mode backbone from a config, optionally pre-trained.

    Args:
        backbone (dict): mmpretrain backbone config (e.g. a pre-training
            config's ``model.backbone``).
        checkpoint (str, optional): Weights, loaded with mmengine's
            ``Pretrained`` initialiser under ``prefix`` (``'backbone.'``:
            the online encoder of an M3I / mmpretrain checkpoint). ``None``:
            random initialisation (``init_weights`` under the current torch
            seed).
        prefix (str): Key prefix in the checkpoint.

    Returns:
        nn.Module: The backbone, ``requires_grad`` off, in eval mode.
    """
    from mmpretrain.registry import MODELS
    cfg = dict(backbone)
    if checkpoint is not None:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=checkpoint,
                               prefix=prefix)
    model = MODELS.build(cfg)
    model.init_weights()
    model.requires_grad_(False)
    model.eval()
    return model


@torch.no_grad()
def extract_features(backbone: torch.nn.Module,
                     images: torch.Tensor,
                     mean: Sequence[float] = (127.5, 127.5, 127.5),
                     std: Sequence[float] = (127.5, 127.5, 127.5),
                     batch_size: int = 256) -> torch.Tensor:
    """Mean of the patch tokens of a frozen backbone, in batches.

    Args:
        backbone (nn.Module): Returns a tuple whose last element is a
            (N, C, H, W) feature map (mmpretrain ViT ``out_type='featmap'``)
            or (N, C) pooled features.
        images (Tensor): (N, 3, H, W) raw images, 0..255.
        mean (sequence of float): Per-channel mean subtracted first (the
            demo's data preprocessor: 127.5).
        std (sequence of float): Per-channel std divided by (127.5).
        batch_size (int): Images per forward pass.

    Returns:
        Tensor: (N, C) float32 features.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    was_training = backbone.training
    backbone.eval()
    feats: List[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        batch = (images[start:start + batch_size].float() - mean_t) / std_t
        out = backbone(batch)
        out = out[-1] if isinstance(out, (tuple, list)) else out
        feats.append(out.mean((2, 3)) if out.ndim == 4 else out)
    backbone.train(was_training)
    return torch.cat(feats).float()


def load_demo_split(data_root: str,
                    split: str,
                    classes: Optional[Sequence[int]] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a demo-digits split, optionally some classes.

    Read through :class:`m3i_mm.datasets.DemoDigits` (mmpretrain's
    ``CustomDataset``, written on first use) with ``NamedLoadImageFromFile``.

    Args:
        data_root (str): Demo-digits folder.
        split (str): ``'train'`` (1,438 digits) or ``'val'`` (359).
        classes (sequence of int, optional): Keep only these labels.

    Returns:
        tuple[Tensor, Tensor]: (N, 3, 32, 32) uint8 images (BGR as loaded)
        and (N,) int64 labels, in the split file's order.
    """
    from m3i_mm.datasets import DemoDigits
    dataset = DemoDigits(
        data_root=data_root, split=split,
        indices=demo_class_indices(data_root, split, classes)
        if classes is not None else None,
        pipeline=[dict(type='NamedLoadImageFromFile'),
                  dict(type='PackInputs')])
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([item['inputs'] for item in items])
    labels = torch.tensor([int(item['data_samples'].gt_label)
                           for item in items])
    return images, labels


def demo_class_indices(data_root: str, split: str,
                       classes: Sequence[int]) -> List[int]:
    """Positions in ``meta/{split}.txt`` of the samples of ``classes``.

    For ``DemoDigits(indices=...)`` (mmengine ``BaseDataset`` subsets).

    Raises:
        ValueError: If a class has no sample in the split (e.g. a typo such
            as 10), naming the class and the file.
    """
    import os.path as osp

    from m3i_mm.datasets.demo.digits import (check_split,
                                             materialize_demo_digits)
    check_split(split)
    root = materialize_demo_digits(data_root)
    ann = osp.join(root, 'meta', f'{split}.txt')
    with open(ann) as f:
        labels = [int(line.split()[-1]) for line in f if line.strip()]
    missing = sorted(set(classes) - set(labels))
    if missing:
        raise ValueError(f'classes {missing} have no sample in {ann}')
    keep = set(classes)
    return [i for i, label in enumerate(labels) if label in keep]


def evaluate_backbone(backbone: torch.nn.Module,
                      train: Tuple[torch.Tensor, torch.Tensor],
                      test: Tuple[torch.Tensor, torch.Tensor],
                      C: Optional[float] = None,
                      folds: int = 5,
                      k: int = 20) -> dict:
    """All frozen-feature numbers of a backbone on one train/test split.

    Args:
        backbone (nn.Module): See :func:`extract_features`.
        train (tuple[Tensor, Tensor]): Raw (N, 3, H, W) images and labels.
        test (tuple[Tensor, Tensor]): Raw (M, 3, H, W) images and labels.
        C (float, optional): Fixed ``C`` of the logistic probe; ``None``:
            chosen by ``folds``-fold CV.
        folds (int): Inner CV folds of the logistic probe.
        k (int): Neighbours of the k-NN.

    Returns:
        dict: ``linear`` (top-1 %, converged logistic regression), ``C``,
        ``knn`` (top-1 %, weighted k-NN), ``std`` and ``erank``
        (:func:`feature_std`, :func:`effective_rank` of the test features).
    """
    train_f = extract_features(backbone, train[0])
    test_f = extract_features(backbone, test[0])
    linear, used = logistic_probe(train_f.numpy(), train[1].numpy(),
                                  test_f.numpy(), test[1].numpy(), C=C,
                                  folds=folds)
    return dict(linear=linear, C=used,
                knn=knn_accuracy(train_f, train[1], test_f, test[1],
                                 k=min(k, len(train_f))),
                std=feature_std(test_f), erank=effective_rank(test_f))
