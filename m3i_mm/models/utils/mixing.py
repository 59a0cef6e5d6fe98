"""Multi-input mixing of M3I: two images in one input, blockwise.

For a batch of N images, image ``j = sigma(i)`` is pasted into image ``i``
wherever the patch-level mask is 1::

    x_mix[i] = (1 - M[i]) * a[i] + M[i] * b[sigma(i)]

``M`` is the blockwise mask upsampled from patches to pixels, so every
``p x p`` patch belongs to exactly one of the two images. In the paper's
notation ``m = 1 - M`` is the keep-mask of the first image.
"""
import torch


def derangement(n: int,
                generator: torch.Generator = None,
                device: torch.device = None) -> torch.Tensor:
    """A random permutation of ``range(n)`` without fixed points (n > 1).

    Uses a random cyclic shift of a random ordering, so ``sigma(i) != i``
    for every ``i``; for ``n == 1`` returns ``[0]``.

    Args:
        n (int): Batch size.
        generator (torch.Generator, optional): Source of randomness.
        device (torch.device, optional): Device of the result.

    Returns:
        Tensor: ``sigma`` of shape (n,), dtype long.
    """
    if n <= 1:
        return torch.zeros(n, dtype=torch.long, device=device)
    # Drawn on the CPU (its generator): the same σ whatever the device.
    # Tensor arithmetic only (no host read): torch.compile keeps one graph.
    order = torch.randperm(n, generator=generator, device='cpu')
    shift = torch.randint(1, n, (1, ), generator=generator, device='cpu')
    sigma = torch.empty_like(order)
    sigma[order] = order[(torch.arange(n, device='cpu') + shift) % n]
    return sigma.to(device)


def upsample_patch_mask(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patch mask (N, h, w) to a pixel mask (N, 1, h*p, w*p)."""
    if mask.dim() != 3:
        raise ValueError(f'mask must be (N, h, w), got {tuple(mask.shape)}')
    pixel = mask.repeat_interleave(patch_size, 1).repeat_interleave(
        patch_size, 2)
    return pixel.unsqueeze(1)


def mix_images(first: torch.Tensor, second: torch.Tensor, mask: torch.Tensor,
               sigma: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mix ``second[sigma]`` into ``first`` where the patch mask is 1.

    Args:
        first (Tensor): Views of the first images, (N, C, H, W).
        second (Tensor): Views the second images are taken from, (N, C, H, W);
            row ``sigma[i]`` is mixed into row ``i``.
        mask (Tensor): Blockwise patch mask (N, H/p, W/p); 1 = take the second
            image's pixels.
        sigma (Tensor): Permutation (N,).
        patch_size (int): Patch size ``p``.

    Returns:
        Tensor: Mixed images (N, C, H, W).
    """
    if first.shape != second.shape:
        raise ValueError(f'views differ in shape: {tuple(first.shape)} vs '
                         f'{tuple(second.shape)}')
    n, _, h, w = first.shape
    if tuple(mask.shape) != (n, h // patch_size, w // patch_size):
        raise ValueError(
            f'mask shape {tuple(mask.shape)} does not match images '
            f'{tuple(first.shape)} with patch size {patch_size}')
    pixel_mask = upsample_patch_mask(mask, patch_size).to(first.dtype)
    return torch.lerp(first, second[sigma], pixel_mask)
