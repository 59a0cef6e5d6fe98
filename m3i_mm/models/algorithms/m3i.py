"""M3I pre-training: multi-input multi-target mutual-information maximisation.

Paper: "Towards All-in-one Pre-training via Maximizing Multi-modal Mutual
Information" (CVPR 2023), Sec. 3.4, Fig. 2/3, appendix B.1, Tables 3/7/14.

One step, for a batch of N images each with a target view T and another
view O (see :class:`~m3i_mm.models.utils.MultiInputMixer`):

1. Input (t_x): image ``j = σ(i)`` is mixed into image ``i`` with the
   blockwise patch mask M: ``x_i = (1 - M_i) ⊙ V1_i + M_i ⊙ V2_σ(i)``; with
   the default ``target_views=('same', 'different')`` V1 = T and V2 = O.
2. Input encoder f_θ: ``z = backbone(x)``, tokens (N, L, C) (in 'mask'
   mode with ``drop_masked``, a ViT encodes only the visible patches).
3. Image target encoder f_φ (momentum backbone): ``t = f_φ(T)``, N forwards.
4. Decoders f_ψ and posteriors, one group per target (Eq. 4):

   - first image ``i``: the decoder sees only the tokens where ``M_i = 0``
     (positions in i's input view) and predicts ``t_i`` at the target
     patches it has not seen: for a 'same' target view the patches where
     ``M_i = 1`` (masked image modeling), for a 'different' view all L
     target patches. Gaussian posterior (L2 on normalised features).
   - second image ``j = σ(i)``: the decoder sees only the tokens where
     ``M_i = 1`` and predicts ``t_j``: at all L patches of j's target view
     for 'different' (Siamese image modeling), at the patches where
     ``M_i = 0`` for 'same'.
   - category: attention pooling over each image's own tokens predicts its
     category embedding; Boltzmann posterior (softmax CE, label smoothing).
   - text: the same for its paired caption, encoded by a jointly trained
     text encoder; Boltzmann posterior over the captions of the whole
     (all-rank) batch with a learned temperature.

   A sample may carry a category, a caption or neither (several sources in
   one run): each global loss covers only the images that have its target,
   averaged over those of all ranks (a rank may have none: its loss is then
   a zero that still reaches every parameter of the head and the target
   encoder, so DDP runs with ``find_unused_parameters=False``).

   Target positions are the target-patch centres mapped into the input
   view's coordinates (:func:`~m3i_mm.models.utils.target_positions_in_input`)
   and, for the decoder's query embedding, the relative scale of a target
   patch to an input patch
   (:func:`~m3i_mm.models.utils.target_scale_in_input`), as in SiameseIM.
5. ``L = L_SSP + λ·(L_category + L_text)`` with λ from
   :class:`~m3i_mm.models.utils.GradientNormBalancer`.

With ``mode='mask'`` (no second image) this is "M3I w/o mix" (Table 3), and
without a category head or image decoder it reduces to the single-target
methods of Table 5 (e.g. ``mode='mask', target_views=('different', ...)`` is
Siamese image modeling, ``('same', ...)`` masked feature modeling).

Image targets are dense (N, L, D) or global (N, D) features (the target
encoder's ``output``). A global target is predicted by a global decoder
(e.g. ``AttentionPoolingHead``) from the image's own tokens; with a
``BoltzmannPosterior`` its candidates are the targets of the whole batch
(all ranks): instance discrimination. A dense target with a
``DenseBoltzmannPosterior`` is told apart from the other positions of all
target images of the batch (all ranks; or of its own image only, its
``negatives``): dense instance discrimination. See ``configs/pretrain/table5/``.
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath

from mmpretrain.models import BaseSelfSupervisor
from mmpretrain.structures import DataSample
from m3i_mm.registry import MODELS
from ..heads import AttentionPoolingHead
from ..losses import BoltzmannPosterior, DenseBoltzmannPosterior
from ..necks import ImageTargetDecoder
from ..target_encoders import backbone_tokens
from ..utils.checks import check_all
from ..utils.data_preprocessor import M3IDataPreprocessor
from ..utils.distributed import gather_with_grad, per_rank_share
from ..utils.masked_encoding import vit_visible_tokens
from ..utils.sample_fields import num_masked, read_batch_targets
from ..utils.view_geometry import (patch_centers, target_positions_in_input,
                                   target_scale_in_input)


def _gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``x[n, index[n]]``: (N, L, C), (N, K) -> (N, K, C); (N, L)
    codebook ids -> (N, K)."""
    if x.dim() == 2:
        return torch.gather(x, 1, index)
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@MODELS.register_module()
class M3I(BaseSelfSupervisor):
    """M3I pre-training algorithm, composed of registered parts.

    Args:
        backbone (dict): Input encoder f_θ; must output an (N, C, h, w) map
            (e.g. ``VisionTransformer`` with ``out_type='featmap'``).
        mixer (dict): Input part, a :class:`MultiInputMixer` config.
        image_target (dict, optional): Image target encoder config (built with
            ``backbone=`` the online backbone), e.g. ``MomentumImageTarget``.
        image_decoder (dict, optional): Dense decoder f_ψ, e.g.
            ``ImageTargetDecoder``.
        separate_image_decoders (bool): One f_ψ per image target (first and
            second image of a mix, Eq. 4 read with one group per target)
            instead of one shared f_ψ. Needs mode ``'mix'``. Defaults to
            False (one decoder for both, as the paper's Sec. 3.4 and
            Table 7 describe a single image-target decoder).
        image_posterior (dict): Posterior of image targets. Defaults to
            ``GaussianPosterior``.
        category_head (dict, optional): Global decoder, e.g.
            ``AttentionPoolingHead``.
        category_embedding (dict, optional): Category target encoder, e.g.
            ``CategoryEmbedding``.
        category_posterior (dict): Defaults to ``BoltzmannPosterior`` with
            label smoothing 0.1.
        text_head (dict, optional): Global decoder for paired texts, e.g.
            ``AttentionPoolingHead``.
        text_target (dict, optional): Text target encoder, e.g.
            ``TextTargetEncoder`` (trained jointly).
        text_posterior (dict): Defaults to a cosine ``BoltzmannPosterior``
            whose temperature is learned (CLIP's ``logit_scale``, initial
            τ = ``text_temperature``) and whose candidates are the texts of
            the whole batch, gathered from all ranks.
        text_temperature (float): Initial τ of the text posterior.
        zero_shot (dict, optional): ``dict(classes=[...], templates=[...])``
            for ``mode='predict'``: class-name prompts (``'{}'`` in each
            template is the class name) through the text encoder give the
            class embeddings the image's pooled embedding is scored against.
            ``classes='imagenet'`` takes mmpretrain's ImageNet-1k names.
            Without it, ``mode='predict'`` classifies with the category head
            and embeddings (Table 4, "ImageNet w/o fine-tuning").
        text_symmetric (bool): Add CLIP's text -> image term (each caption
            picks its image among the batch's, all ranks) and average the
            two directions. Defaults to False: the paper's image -> text
            form (Sec. 3.2).
        loss_balancer (dict, optional): ``GradientNormBalancer`` config;
            ``None`` fixes λ = 1.
        data_preprocessor (dict, optional): Defaults to
            ``SelfSupDataPreprocessor``.
        init_cfg (dict, optional): Initialisation config.
    """

    def __init__(self,
                 backbone: dict,
                 mixer: dict,
                 image_target: Optional[dict] = None,
                 image_decoder: Optional[dict] = None,
                 separate_image_decoders: bool = False,
                 image_posterior: dict = dict(type='GaussianPosterior'),
                 category_head: Optional[dict] = None,
                 category_embedding: Optional[dict] = None,
                 category_posterior: dict = dict(
                     type='BoltzmannPosterior', label_smoothing=0.1),
                 text_head: Optional[dict] = None,
                 text_target: Optional[dict] = None,
                 text_posterior: dict = dict(
                     type='BoltzmannPosterior', normalize=True),
                 text_temperature: float = 0.07,
                 zero_shot: Optional[dict] = None,
                 text_symmetric: bool = False,
                 loss_balancer: Optional[dict] = dict(
                     type='GradientNormBalancer'),
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            backbone=backbone,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        # mmpretrain's ViT gives DropPath numpy rates (np.linspace), on
        # which torch.compile cannot branch: Python floats, before the
        # momentum target copies the backbone.
        for module in self.backbone.modules():
            if isinstance(module, DropPath):
                module.drop_prob = float(module.drop_prob)
        self.mixer = MODELS.build(mixer)
        if (image_target is None) != (image_decoder is None):
            raise ValueError('image_target and image_decoder must be given '
                             'together')
        if (category_head is None) != (category_embedding is None):
            raise ValueError('category_head and category_embedding must be '
                             'given together')
        if (text_head is None) != (text_target is None):
            raise ValueError('text_head and text_target must be given '
                             'together')
        if image_target is None and category_head is None and \
                text_head is None:
            raise ValueError('M3I needs at least one target')
        self.image_target = None if image_target is None else MODELS.build(
            dict(image_target, backbone=self.backbone))
        self.image_decoder = MODELS.build(image_decoder) \
            if image_decoder else None
        if separate_image_decoders and (image_decoder is None
                                        or self.mixer.mode != 'mix'):
            raise ValueError('separate_image_decoders needs an image_decoder '
                             'and mixer mode "mix" (two image targets), got '
                             f'mode {self.mixer.mode!r}')
        self.image_decoder_second = MODELS.build(image_decoder) \
            if separate_image_decoders else None
        self.image_posterior = MODELS.build(image_posterior)
        self.category_head = MODELS.build(category_head) \
            if category_head else None
        self.category_embedding = MODELS.build(category_embedding) \
            if category_embedding else None
        self.category_posterior = MODELS.build(category_posterior)
        self.text_head = MODELS.build(text_head) if text_head else None
        self.text_target = MODELS.build(text_target) if text_target else None
        self.text_posterior = MODELS.build(text_posterior)
        if self.text_target is not None and isinstance(
                self.data_preprocessor, M3IDataPreprocessor):
            # Captions are tokenised with the batch, outside the loss graph.
            self.data_preprocessor.caption_tokenizer = \
                self.text_target.tokenize
        if self.text_head is not None:
            self.text_logit_scale = nn.Parameter(
                torch.tensor(math.log(1.0 / text_temperature)))
        if zero_shot is not None and self.text_head is None:
            raise ValueError('zero_shot needs text_head and text_target')
        self.zero_shot = zero_shot
        if text_symmetric and self.text_head is None:
            raise ValueError('text_symmetric needs text_head and text_target')
        self.text_symmetric = text_symmetric
        # Class embeddings of one evaluation (see _zero_shot_classes).
        self._zero_shot_cache = None
        self.loss_balancer = MODELS.build(loss_balancer) \
            if loss_balancer else None
        if self.loss_balancer is not None:
            # Each rank's own measurement, reduced in step(): never replaced
            # by rank 0's (DDP with broadcast_buffers=True).
            self._ddp_params_and_buffers_to_ignore = [
                'loss_balancer.pending_norms'
            ]

    def extract_feat(self, inputs):
        """Backbone features of the (first) view."""
        if isinstance(inputs, (list, tuple)):
            inputs = inputs[0]
        return self.backbone(inputs)

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        """``'tensor'``, ``'loss'`` or ``'predict'`` (zero-shot)."""
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        return super().forward(inputs, data_samples, mode)

    @torch.no_grad()
    def predict(self, inputs, data_samples: Optional[List[DataSample]] = None
                ) -> List[DataSample]:
        """Classification without fine-tuning and image/text embeddings.

        Each whole (unmixed) image is scored (``pred_score``, ``pred_label``,
        for ``TieAwareAccuracy``): with ``zero_shot``, its text-head
        embedding against the class-name prompts; otherwise, with a category
        head, its category-head prediction against the pre-trained category
        embeddings, as in the category posterior (Table 4, "ImageNet w/o
        Fine-tuning"). With a text head, samples also get
        ``image_embedding`` (D,) and, where every sample has its caption(s),
        ``text_embedding``: (D,) for one caption, (M, D) for a list of M
        (for ``ImageTextRetrieval``). Captions are read from ``caption``
        (this project's image-text datasets) or ``text`` (mmpretrain's
        retrieval datasets, e.g. ``Flickr30kRetrieval``: an image's 5
        captions).
        """
        if self.text_head is None and self.category_head is None:
            raise RuntimeError('predict needs a category head or text_head '
                               'and text_target')
        images = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        tokens = backbone_tokens(self.backbone, images)
        if data_samples is None:
            data_samples = [DataSample() for _ in range(len(images))]
        scores = None
        if self.zero_shot is None and self.category_head is not None:
            scores = self._category_logits(tokens).softmax(-1)
        if self.text_head is None:
            for sample, score in zip(data_samples, scores):
                sample.set_pred_score(score).set_pred_label(score.argmax())
            return data_samples
        image_emb = F.normalize(self.text_head(tokens), dim=-1)
        if self.zero_shot is not None:
            scores = (image_emb @ self._zero_shot_classes().t()).softmax(-1)
        for i, sample in enumerate(data_samples):
            sample.set_field(image_emb[i], 'image_embedding')
            if scores is not None:
                sample.set_pred_score(scores[i]).set_pred_label(
                    scores[i].argmax())
        captions = [s.get('caption', s.get('text')) for s in data_samples]
        if self.text_target is not None and all(c is not None
                                                for c in captions):
            flat = [c for cs in captions
                    for c in ([cs] if isinstance(cs, str) else cs)]
            texts = F.normalize(self.text_target(flat), dim=-1)
            start = 0
            for sample, cs in zip(data_samples, captions):
                if isinstance(cs, str):
                    sample.set_field(texts[start], 'text_embedding')
                    start += 1
                else:
                    sample.set_field(texts[start:start + len(cs)],
                                     'text_embedding')
                    start += len(cs)
        return data_samples

    @torch.no_grad()
    def monitor_outputs(self, images: torch.Tensor
                        ) -> Dict[str, torch.Tensor]:
        """What the training monitors score, from one backbone pass
        (:class:`~m3i_mm.engine.hooks.M3IMonitorHook`).

        Args:
            images (Tensor): (N, C, H, W) whole, preprocessed images.

        Returns:
            dict[str, Tensor]: ``features``, (N, C) mean of the backbone's
            tokens (the k-NN's features, as
            :func:`~m3i_mm.evaluation.probe.extract_features`); with a
            category head, ``category``, (N, K) logits against the category
            embeddings (the category posterior's); with ``zero_shot``,
            ``zero_shot``, (N, K') cosine similarity to each class's prompt
            embedding.
        """
        tokens = backbone_tokens(self.backbone, images)
        outputs = {'features': tokens.mean(1)}
        if self.category_head is not None:
            outputs['category'] = self._category_logits(tokens)
        if self.zero_shot is not None:
            outputs['zero_shot'] = F.normalize(
                self.text_head(tokens), dim=-1) @ self._zero_shot_classes().t()
        return outputs

    def _category_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L, C) tokens -> (N, K) category-posterior logits."""
        return self.category_posterior.logits(
            self.category_head(tokens), self.category_embedding.weight,
            bias=self.category_embedding.bias)

    def train(self, mode: bool = True) -> 'M3I':
        """Switch mode; drops the zero-shot class embeddings (the runner
        calls ``eval()`` before each evaluation, so they are recomputed
        with the current text encoder)."""
        self._zero_shot_cache = None
        return super().train(mode)

    def _zero_shot_classes(self) -> torch.Tensor:
        """:meth:`class_embeddings`, computed once per evaluation (without
        gradients; with gradients enabled they are computed each call)."""
        if torch.is_grad_enabled():
            return self.class_embeddings()
        if self._zero_shot_cache is None:
            self._zero_shot_cache = self.class_embeddings()
        return self._zero_shot_cache

    def class_embeddings(self) -> torch.Tensor:
        """(num_classes, D) normalised mean embedding of each class's
        prompts."""
        templates = self.zero_shot.get('templates', ['a photo of a {}.'])
        classes = self.zero_shot['classes']
        if classes == 'imagenet':
            from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
            classes = [name.split(',')[0] for name in IMAGENET_CATEGORIES]
        embeddings = []
        for name in classes:
            prompts = [t.format(name) for t in templates]
            emb = F.normalize(self.text_target(prompts), dim=-1).mean(0)
            embeddings.append(F.normalize(emb, dim=-1))
        return torch.stack(embeddings)

    # ------------------------------------------------------------------ #
    def loss(self, inputs: List[torch.Tensor],
             data_samples: List[DataSample]) -> Dict[str, torch.Tensor]:
        """Losses of one M3I step (see the module docstring).

        Args:
            inputs (list[Tensor]): ``[target views, other views]``, each
                (N, C, H, W), and, for an image target with
                ``geometric_view``, the target views before photometric
                augmentation as a third entry.
            data_samples (list[DataSample]): Carry ``mask`` (h, w),
                ``view_boxes`` (2, 4), ``view_flips`` (2,), with a category
                target ``gt_label``, with a text target ``caption``, and,
                from ``M3IDataPreprocessor``, the fields of
                :mod:`~m3i_mm.models.utils.sample_fields` (without them the
                loss computes them: host reads, graph breaks under
                ``torch.compile``).

        Returns:
            dict[str, Tensor]: Loss terms (``loss_*``) and logged values.
        """
        device = inputs[0].device
        tokenize = self.text_target.tokenize if self.text_target else None
        targets = read_batch_targets(data_samples, device, tokenize)
        mask = self._stack(data_samples, 'mask', device).bool()
        n, grid = mask.shape[0], tuple(mask.shape[1:])
        mixed = self.mixer(inputs[:2], mask)
        # Token indices of each image: first image where M = 0, second M = 1.
        first_idx, second_idx = self._split_tokens(mask, data_samples)
        tokens = self._encode(mixed.images, first_idx, grid)

        lam = torch.ones((), device=device)
        if self.loss_balancer is not None:
            lam = self.loss_balancer.step().to(device)
            tokens_uni = self.loss_balancer.tap(tokens, 'uni')
            tokens_multi = self.loss_balancer.tap(tokens, 'multi')
        else:
            tokens_uni = tokens_multi = tokens

        losses = {}
        if self.image_target is not None:
            losses.update(
                self._image_losses(inputs, data_samples, mask, mixed,
                                   tokens_uni, first_idx, second_idx))
        # Each sample has a category, a paired text, or neither: a global
        # loss covers only the images that have its target.
        images = [(first_idx, torch.arange(n, device=device))]
        if mixed.sigma is not None:
            images.append((second_idx, mixed.sigma))
        if self.category_head is not None:
            labels, has_label = self._labels(targets, data_samples)
            share = per_rank_share(has_label.sum())
            loss_cls = 0.0
            for idx, who in images:
                loss_cls = loss_cls + self._category_loss(
                    tokens_multi, idx, labels[who], has_label[who], share)
            losses['loss_cls'] = lam * loss_cls
        if self.text_head is not None:
            # text_symmetric: _text_loss sums both directions; their mean.
            directions = 2 if self.text_symmetric else 1
            losses['loss_text'] = lam * self._text_loss(
                tokens_multi, images, targets) / directions
        if self.category_head is not None or self.text_head is not None:
            losses['lambda_sp'] = lam
        if self.loss_balancer is not None:
            # Logged, not summed (no 'loss' in the names): λ's ratio.
            norms = self.loss_balancer.mean_norms.to(device)
            losses['grad_norm_uni'], losses['grad_norm_multi'] = norms
        return losses

    # ------------------------------------------------------------------ #
    def _encode(self, images: torch.Tensor, visible_idx: torch.Tensor,
                grid: Tuple[int, int]) -> torch.Tensor:
        """(N, L, C) encoder tokens; with ``mixer.drop_masked`` only the
        ``visible_idx`` tokens are encoded and the rest are zeros (never
        read: every loss of 'mask' mode reads the visible tokens)."""
        if self.mixer.drop_masked:
            visible = vit_visible_tokens(self.backbone, images, visible_idx,
                                         grid)
            tokens = visible.new_zeros(
                visible.shape[0], grid[0] * grid[1], visible.shape[-1])
            return tokens.scatter(
                1, visible_idx[..., None].expand_as(visible), visible)
        tokens = backbone_tokens(self.backbone, images)
        if tokens.shape[1] != grid[0] * grid[1]:
            raise ValueError(
                f'backbone gives {tokens.shape[1]} tokens but the mask grid '
                f'is {grid}; mask patch size and backbone stride must match')
        return tokens

    def _image_losses(self, inputs, data_samples, mask, mixed, tokens,
                      first_idx, second_idx) -> Dict[str, torch.Tensor]:
        device = tokens.device
        n = tokens.shape[0]
        grid = tuple(mask.shape[1:])
        self.image_target.update(self.backbone)
        targets = self.image_target(self._target_images(inputs))
        # (N, D) global features; (N, L) integer ids are dense (tokens).
        if targets.dim() == 2 and targets.is_floating_point():
            return self._global_image_losses(tokens, targets, mixed,
                                             first_idx, second_idx)
        if isinstance(self.image_decoder, AttentionPoolingHead):
            raise ValueError(
                f'dense image targets {tuple(targets.shape)} need a dense '
                f'decoder (e.g. ImageTargetDecoder), not AttentionPoolingHead'
                f" (or set the target encoder's output='global')")
        if isinstance(self.image_posterior, BoltzmannPosterior) and \
                not isinstance(self.image_posterior, DenseBoltzmannPosterior):
            raise ValueError('dense image targets with a Boltzmann posterior '
                             'need DenseBoltzmannPosterior (negatives = the '
                             'other target positions)')
        if targets.shape[1] != grid[0] * grid[1]:
            raise ValueError(
                f'{type(self.image_target).__name__} gives '
                f'{targets.shape[1]} dense targets per image but the patch '
                f'grid {grid} has {grid[0] * grid[1]} positions (a teacher '
                "with its own input size must keep the student's grid)")
        boxes = self._stack(data_samples, 'view_boxes', device).float()
        flips = self._stack(data_samples, 'view_flips', device).bool()
        masked_input = self.mixer.mode != 'full'

        own = torch.arange(n, device=device)
        # First image: its own tokens, its own target.
        losses = {
            'loss_img_first':
            self._dense_loss(self.image_decoder, tokens, first_idx, own,
                             mixed.first_view,
                             second_idx if masked_input else first_idx,
                             targets, boxes, flips, grid)
        }
        if mixed.sigma is not None:
            decoder = self.image_decoder if self.image_decoder_second is None \
                else self.image_decoder_second
            losses['loss_img_second'] = self._dense_loss(
                decoder, tokens, second_idx, mixed.sigma, mixed.second_view,
                first_idx, targets, boxes, flips, grid)
        return losses

    def _target_images(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        """The target views the image target encodes: ``inputs[2]`` (before
        photometric augmentation) for a target with ``geometric_view``,
        else ``inputs[0]``; one image per sample."""
        if not getattr(self.image_target, 'geometric_view', False):
            return inputs[0]
        if len(inputs) < 3:
            raise ValueError(
                f'{type(self.image_target).__name__}(geometric_view=True) '
                f'needs the target views before photometric augmentation as '
                f'inputs[2], got {len(inputs)} inputs; set '
                'model.data_preprocessor.geometric_target_view=True (or '
                'M3IViews(geometric_target_view=True))')
        return inputs[2]

    def _dense_loss(self, decoder: nn.Module, tokens: torch.Tensor,
                    token_idx: torch.Tensor,
                    image_idx: torch.Tensor, input_view: int,
                    hidden_idx: torch.Tensor, targets: torch.Tensor,
                    boxes: torch.Tensor, flips: torch.Tensor,
                    grid: Tuple[int, int]) -> torch.Tensor:
        """Decode one image of each mixed input and score its prediction.

        Args:
            decoder (nn.Module): The image decoder f_ψ of this image.
            tokens (Tensor): (N, L, C) encoder tokens of the mixed inputs.
            token_idx (Tensor): (N, Lc) tokens belonging to this image.
            image_idx (Tensor): (N,) which image of the batch it is.
            input_view (int): The view it entered with (0 = its target view).
            hidden_idx (Tensor): (N, Lh) grid positions it did not see; the
                loss covers these when ``input_view`` is its target view and
                all target patches otherwise.
            targets (Tensor): (N, L, D) target features of every image.
            boxes (Tensor): (N, 2, 4) view crop boxes; flips (N, 2).
            grid (tuple): Patch grid (h, w).

        Returns:
            Tensor: Posterior loss.
        """
        centers = patch_centers(grid, device=tokens.device)
        token_pos = centers[token_idx]
        query_pos = target_positions_in_input(
            boxes[image_idx, 0], flips[image_idx, 0], boxes[image_idx,
                                                            input_view],
            flips[image_idx, input_view], grid)
        query_scale = target_scale_in_input(boxes[image_idx, 0],
                                            boxes[image_idx, input_view])
        target = targets[image_idx]
        if input_view == 0:  # same view: predict what was hidden
            query_pos = _gather_tokens(query_pos, hidden_idx)
            target = _gather_tokens(target, hidden_idx)
        pred = decoder(
            _gather_tokens(tokens, token_idx), token_pos, query_pos,
            query_scale=query_scale)
        return self.image_posterior(pred, target)

    def _category_loss(self, tokens: torch.Tensor, token_idx: torch.Tensor,
                       labels: torch.Tensor, has_label: torch.Tensor,
                       share: torch.Tensor) -> torch.Tensor:
        """Category cross-entropy of every image of the batch, rows
        without a label weighted 0 (fixed shapes, no row selection)."""
        pred = self.category_head(_gather_tokens(tokens, token_idx))
        return self.category_posterior(
            pred,
            self.category_embedding.weight,
            labels,
            bias=self.category_embedding.bias,
            avg_factor=share,
            sample_weight=has_label)

    def _text_loss(self, tokens: torch.Tensor, images: list,
                   targets: dict) -> torch.Tensor:
        """Each image predicts its own paired text among all texts.

        Every sample's caption is encoded once from its ``caption_tokens``
        (an empty string stands in for a missing one and is masked out as a
        candidate); the candidates are gathered from all ranks with
        gradients. Images without a caption weigh 0 (fixed shapes). Averaged
        over the captioned images of all ranks.
        """
        has_text = targets['has_caption']
        texts = self.text_target(targets['caption_tokens'])
        candidates, offset = gather_with_grad(texts)
        valid = gather_with_grad(has_text.float())[0] > 0.5
        share = per_rank_share(has_text.sum())
        temperature = 1.0 / self.text_logit_scale.clamp(max=math.log(100)).exp()
        loss = 0.0
        for idx, who in images:
            rows = has_text[who]
            pred = self.text_head(_gather_tokens(tokens, idx))
            if self.text_symmetric:
                loss = loss + self._text_to_image_loss(
                    pred, rows, who, texts, temperature, share)
            loss = loss + self.text_posterior(
                pred, candidates, who + offset,
                temperature=temperature, candidate_mask=valid,
                avg_factor=share, sample_weight=rows)
        return loss

    def _labels(self, targets: dict, data_samples: List[DataSample]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N,) labels (0 where absent) and (N,) bool "has a label", from
        :func:`~m3i_mm.models.utils.sample_fields.read_batch_targets`.

        Raises:
            ValueError: A label outside ``[0, num_classes)``, naming it, the
                sample's ``img_path`` and ``num_classes`` (the posterior's
                cross entropy raised ``IndexError: Target N is out of
                bounds``).
        """
        num_classes = self.category_embedding.num_classes
        labels, present = targets['label_index'], targets['has_label']

        def first_bad() -> str:
            bad = int(((labels < 0) | (labels >= num_classes)).nonzero()[0])
            return self._label_error(data_samples[bad], labels[bad])

        check_all(~present | ((labels >= 0) & (labels < num_classes)),
                  first_bad)
        return labels, present

    def _label_error(self, sample: DataSample, value: torch.Tensor) -> str:
        return (f'label {value.item()} of sample '
                f'{sample.get("img_path", "(no img_path)")} is not an '
                f'integer in [0, {self.category_embedding.num_classes}) '
                '(num_classes of category_embedding)')

    def _global_image_losses(self, tokens: torch.Tensor,
                             targets: torch.Tensor, mixed,
                             first_idx: torch.Tensor,
                             second_idx: torch.Tensor
                             ) -> Dict[str, torch.Tensor]:
        """Global image targets (Table 2 (c, f, i, l)).

        Each image of a mixed input pools its own tokens in its global
        decoder (one shared, or one per image with
        ``separate_image_decoders``), (N, D) predictions of its target view's global feature.
        Gaussian posterior: L2 to its own target (stop-gradient, BYOL-like).
        Boltzmann posterior: its own target among the targets of the whole
        batch, gathered from all ranks (negative samples, MoCo v3-like).

        Args:
            tokens (Tensor): (N, L, C) encoder tokens of the mixed inputs.
            targets (Tensor): (N, D) target features of every image.
            mixed (MixedBatch): Which image is where.
            first_idx, second_idx (Tensor): (N, Lc) token indices of the
                first / second image.

        Returns:
            dict[str, Tensor]: ``loss_img_first`` (and ``loss_img_second``).
        """
        if isinstance(self.image_posterior, DenseBoltzmannPosterior):
            raise ValueError('DenseBoltzmannPosterior needs dense image '
                             'targets; the image target is global (N, D)')
        if isinstance(self.image_decoder, ImageTargetDecoder):
            raise ValueError(
                f'a global image target {tuple(targets.shape)} needs a '
                f'global decoder (e.g. AttentionPoolingHead), not '
                f'ImageTargetDecoder')
        own = torch.arange(tokens.shape[0], device=tokens.device)
        groups = {'loss_img_first': (first_idx, own, self.image_decoder)}
        if mixed.sigma is not None:
            groups['loss_img_second'] = (
                second_idx, mixed.sigma, self.image_decoder_second
                or self.image_decoder)
        contrastive = isinstance(self.image_posterior, BoltzmannPosterior)
        if contrastive:
            candidates, offset = gather_with_grad(targets.detach())
        losses = {}
        for name, (idx, who, decoder) in groups.items():
            pred = decoder(_gather_tokens(tokens, idx))
            if pred.shape != targets[who].shape:
                raise ValueError(
                    f'a global image target {tuple(targets.shape)} needs a '
                    f'global decoder (e.g. AttentionPoolingHead) with '
                    f'out_channels={targets.shape[1]}; '
                    f'{type(self.image_decoder).__name__} gave '
                    f'{tuple(pred.shape)}')
            losses[name] = self.image_posterior(
                pred, candidates, who + offset) if contrastive else \
                self.image_posterior(pred, targets[who])
        return losses

    def _text_to_image_loss(self, pred: torch.Tensor, rows: torch.Tensor,
                            who: torch.Tensor, texts: torch.Tensor,
                            temperature: torch.Tensor,
                            share: torch.Tensor) -> torch.Tensor:
        """CLIP's text -> image term: each caption picks the prediction of
        its image among those of all images of the batch (all ranks).

        Args:
            pred (Tensor): (N, D) text-head predictions of the input rows.
            rows (Tensor): (N,) bool, the rows whose image has a caption:
                only they are candidates and queries (weights, not row
                selection, so shapes stay fixed).
            who (Tensor): (N,) sample index of each row's image.
            texts (Tensor): (N, D) caption embeddings of the local samples.
            temperature (Tensor): τ.
            share (Tensor): This rank's share of the captioned images of all
                ranks (:func:`per_rank_share`), the loss's divisor.

        Returns:
            Tensor: Scalar loss.
        """
        candidates, offset = gather_with_grad(pred)
        valid = gather_with_grad(rows.float())[0] > 0.5
        own = torch.arange(len(rows), device=pred.device)
        return self.text_posterior(
            texts[who], candidates, own + offset, temperature=temperature,
            candidate_mask=valid, avg_factor=share, sample_weight=rows)

    def _split_tokens(self, mask: torch.Tensor, data_samples: list
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Indices (N, L-K) where M = 0 and (N, K) where M = 1.

        K, the number of masked patches, is the same for every mask of the
        batch (``BlockwiseMaskGenerator``), so each image's tokens form a
        fixed-size tensor. It is the samples' ``num_masked``, a Python int
        the data preprocessor read on the host; for samples without it, it
        is read here (a host read: a graph break under ``torch.compile``).
        In ``'full'`` mode all tokens are first.

        Raises:
            ValueError: Masks with different counts, or hiding no or all
                patches.
        """
        flat = mask.flatten(1)
        n, length = flat.shape
        if self.mixer.mode == 'full':
            all_idx = torch.arange(length, device=mask.device)
            return all_idx.expand(n, -1), all_idx[:0].expand(n, -1)
        k = data_samples[0].get('num_masked')
        if k is None:
            k = num_masked(data_samples)
        if not 0 < k < length:
            raise ValueError(f'mask must hide some but not all patches, got '
                             f'{k} of {length}')
        check_all(flat.sum(1) == k, lambda: (
            f'the masks hide {flat.sum(1).tolist()} patches but the samples\''
            f' num_masked metainfo (set by the data preprocessor) is {k}'))
        order = torch.argsort(flat.to(torch.int8), dim=1, stable=True)
        return order[:, :length - k], order[:, length - k:]

    @staticmethod
    def _stack(data_samples: List[DataSample], key: str,
               device: torch.device) -> torch.Tensor:
        try:
            values = [sample.get(key) for sample in data_samples]
        except AttributeError:
            values = [None]
        if any(v is None for v in values):
            raise KeyError(f'M3I needs "{key}" in every data sample; add it '
                           f'to PackInputs(algorithm_keys=...) in the '
                           f'pipeline')
        return torch.stack([torch.as_tensor(v, device=device) for v in values])
