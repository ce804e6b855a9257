"""Building blocks shared by every model: DCGAN encoder/decoder stacks and weight initialisation.

DCGAN (Radford et al., 2016) conventions throughout: 4x4 kernels with stride 2, BatchNorm on every
layer but the first of an encoder, LeakyReLU(0.2) in encoders, ReLU in decoders, Tanh output, no
biases before BatchNorm.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def check_image_size(image_size: int, minimum: int = 16) -> int:
    """Return log2(image_size); the networks halve the resolution once per block."""
    if image_size < minimum or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= {minimum}, got {image_size}")
    return int(math.log2(image_size))


@torch.no_grad()
def dcgan_init_(module: nn.Module) -> None:
    """DCGAN initialisation of one module: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02),
    biases 0. Apply with ``net.apply(dcgan_init_)`` so every submodule is reached."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d, nn.SyncBatchNorm)):
        if module.weight is not None:
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)
        if module.track_running_stats:
            module.reset_running_stats()


def init_weights(net: nn.Module) -> nn.Module:
    net.apply(dcgan_init_)
    return net


# The GEMM paths below serve maps of at most this many pixels: a convolution's output, a transposed
# convolution's input. Measured on an Intel Xeon (AVX-512; docs/speed.md): at 2x2 the matrix
# products ran forward and backward 2-5x faster than oneDNN's kernels (at 1x1, first measured on
# AMD Zen 3, many times faster); at 4x4 even (transposed) or slower (a convolution's output).
SMALL_MAP_PIXELS = 4


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` (N, C, H, W) keeps its channels innermost in memory, 1x1 maps included
    (their strides tell a channels-last (C, 1, C, C) from a default (C, 1, 1, 1) tensor)."""
    return x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1 and x.stride(3) == x.shape[1]


def _channels_last_out(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether a matrix-product path's output goes channels-last: as its input ``x`` is, so that
    a network stays in one layout (mixed layouts cost copies, and BatchNorm's backward was
    measured 30x slower on them); a 1x1 input, laid out either way, follows the layer's
    ``channels_last_1x1`` (set by :func:`channels_last_where_library`)."""
    return layer.channels_last_1x1 if x.shape[-2:] == (1, 1) else is_channels_last(x)


def _as_layout(out: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class DenseFastConv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes a convolution with a tiny output map as matrix products.

    At the narrow end of the networks (4x4 -> 2x2 and 2x2 -> 1x1 in the UNet, 4x4 -> 1x1 for the
    features f(.)) oneDNN's convolution kernels are many times slower on CPUs than a plain GEMM
    of the same size, their backward above all. Two exact rewrites of the same function with the
    same parameters:

    * one output pixel: a dense layer over the taps that touch the input, ``x.flatten(1) @
      W[:, :, p:p+H, p:p+W].flatten(1).T`` (the taps that only ever see padding get a zero
      gradient either way);
    * up to ``SMALL_MAP_PIXELS`` output pixels: im2col (``F.unfold``) and one matrix product over
      all images and output pixels.

    The output keeps the input's memory layout. Set ``dense_fast_path = False`` to run the
    library convolution throughout.
    """

    dense_fast_path = True
    channels_last_1x1 = False

    def _gemm_ready(self, x: torch.Tensor) -> bool:
        return (
            self.dense_fast_path
            and x.dim() == 4
            and self.groups == 1
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and self.dilation == (1, 1)
        )

    def _output_size(self, x: torch.Tensor) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        h, w = x.shape[-2:]
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def _dense_window(self, x: torch.Tensor) -> tuple[int, int] | None:
        if not self._gemm_ready(x):
            return None
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        h, w = x.shape[-2:]
        if self._output_size(x) != (1, 1) or h + ph > kh or w + pw > kw:
            return None
        return ph, pw

    def _small_map(self, x: torch.Tensor) -> tuple[int, int] | None:
        if not self._gemm_ready(x):
            return None
        oh, ow = self._output_size(x)
        return (oh, ow) if 1 <= oh * ow <= SMALL_MAP_PIXELS else None

    def uses_matrix_product(self, x: torch.Tensor) -> bool:
        return self._dense_window(x) is not None or self._small_map(x) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = self._dense_window(x)
        n = x.shape[0]
        if window is not None:
            (ph, pw), (h, w) = window, x.shape[-2:]
            weight = self.weight[:, :, ph : ph + h, pw : pw + w]
            if _channels_last_out(self, x):  # flatten both in channels-last order
                rows, weight = x.permute(0, 2, 3, 1).reshape(n, -1), weight.permute(0, 2, 3, 1)
                out = F.linear(rows, weight.reshape(self.out_channels, -1), self.bias)
                return out.view(n, 1, 1, -1).permute(0, 3, 1, 2)
            out = F.linear(x.reshape(n, -1), weight.reshape(self.out_channels, -1), self.bias)
            return out.view(n, -1, 1, 1)
        small = self._small_map(x)
        if small is None:
            return super().forward(x)
        oh, ow = small
        columns = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, C*k*k, L)
        rows = columns.transpose(1, 2).reshape(n * oh * ow, -1)  # one row per output pixel
        out = F.linear(rows, self.weight.reshape(self.out_channels, -1), self.bias)
        return _as_layout(
            out.view(n, oh, ow, self.out_channels).permute(0, 3, 1, 2), _channels_last_out(self, x)
        )


class DenseFastConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` that computes a transposed convolution of a tiny input map as matrix
    products (see :class:`DenseFastConv2d` for why):

    * a 1x1 input: one product, output[:, o, a, b] = sum_c x[:, c] W[c, o, a + p, b + p];
    * up to ``SMALL_MAP_PIXELS`` input pixels: one product over all images and input pixels to
      every tap's contribution, summed into place by col2im (``F.fold``).

    Same function and parameters as the library kernel; the output keeps the input's memory
    layout; ``dense_fast_path = False`` turns it off.
    """

    dense_fast_path = True
    channels_last_1x1 = False

    def _gemm_ready(self, x: torch.Tensor, output_size) -> bool:
        return (
            self.dense_fast_path
            and output_size is None
            and x.dim() == 4
            and self.groups == 1
            and self.dilation == (1, 1)
            and self.output_padding == (0, 0)
        )

    def _path(self, x: torch.Tensor, output_size=None) -> str | None:
        """``"dense"`` (1x1 input), ``"small"`` (up to SMALL_MAP_PIXELS) or None (the library's)."""
        if not self._gemm_ready(x, output_size):
            return None
        (kh, kw), (ph, pw), (sh, sw) = self.kernel_size, self.padding, self.stride
        h, w = x.shape[-2:]
        if (h, w) == (1, 1) and kh - 2 * ph >= 1 and kw - 2 * pw >= 1:
            return "dense"
        oh, ow = (h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw
        return "small" if 1 < h * w <= SMALL_MAP_PIXELS and oh >= 1 and ow >= 1 else None

    def uses_matrix_product(self, x: torch.Tensor) -> bool:
        return self._path(x) is not None

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        path = self._path(x, output_size)
        if path is None:
            return super().forward(x, output_size)
        (kh, kw), (ph, pw), (sh, sw) = self.kernel_size, self.padding, self.stride
        n, (h, w) = x.shape[0], x.shape[-2:]
        if path == "dense":
            oh, ow = kh - 2 * ph, kw - 2 * pw
            weight = self.weight[:, :, ph : ph + oh, pw : pw + ow]
            if _channels_last_out(self, x):  # the product's columns in (a, b, o) order
                out = x.reshape(n, -1) @ weight.permute(0, 2, 3, 1).reshape(self.in_channels, -1)
                out = out.view(n, oh, ow, self.out_channels).permute(0, 3, 1, 2)
            else:
                out = (x.reshape(n, -1) @ weight.reshape(self.in_channels, -1)).view(
                    n, self.out_channels, oh, ow
                )
        else:
            oh, ow = (h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw
            rows = x.permute(0, 2, 3, 1).reshape(n * h * w, self.in_channels)  # one row per input pixel
            taps = rows @ self.weight.reshape(self.in_channels, -1)  # (N*H*W, C_out*kh*kw)
            columns = taps.view(n, h * w, -1).transpose(1, 2)  # (N, C_out*kh*kw, H*W)
            out = F.fold(columns, (oh, ow), self.kernel_size, padding=self.padding, stride=self.stride)
            out = _as_layout(out, _channels_last_out(self, x))
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out


def set_dense_fast_path(net: nn.Module, enabled: bool) -> nn.Module:
    """Turn the matrix-product path of :class:`DenseFastConv2d` / :class:`DenseFastConvTranspose2d` on or off."""
    for module in net.modules():
        if isinstance(module, (DenseFastConv2d, DenseFastConvTranspose2d)):
            module.dense_fast_path = enabled
    return net


def channels_last_where_library(net: nn.Module, forward: Callable[[], object]) -> int:
    """Give channels-last weights to the convolutions that ``forward()`` (a pass over inputs of
    the training shape) runs through the library kernels, and the default layout to those on the
    matrix-product paths; returns how many went channels-last.

    With channels-last activations, oneDNN reorders a default-layout weight at every call
    (scoring measured ~1.2x faster with channels-last weights), while the matrix-product paths
    produce default-layout weight gradients that gradient accumulation and fused Adam would copy
    into a channels-last weight at every step (docs/speed.md). Values are unchanged either way.
    """
    layers = [m for m in net.modules() if isinstance(m, (DenseFastConv2d, DenseFastConvTranspose2d))]
    library: set[nn.Module] = set()

    def record(module, inputs, output):
        if not module.uses_matrix_product(inputs[0]):
            library.add(module)

    hooks = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.no_grad():
            forward()
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        for layer in layers:
            layout = torch.channels_last if layer in library else torch.contiguous_format
            layer.weight.data = layer.weight.data.contiguous(memory_format=layout)
            layer.channels_last_1x1 = True  # the activations are channels-last
    return len(library)


class _ConcatChannels(torch.autograd.Function):
    """``torch.cat(tensors, 1)`` whose backward hands each input a gradient laid out as that input
    is, rather than a strided slice of the concatenation's gradient."""

    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> torch.Tensor:
        ctx.widths = [t.shape[1] for t in tensors]
        ctx.layouts = [
            torch.channels_last if is_channels_last(t) else torch.contiguous_format for t in tensors
        ]
        ctx.dtypes = [t.dtype for t in tensors]
        return torch.cat(tensors, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        parts = grad.split(ctx.widths, 1)
        return tuple(
            part.to(dtype).contiguous(memory_format=layout)
            for part, layout, dtype in zip(parts, ctx.layouts, ctx.dtypes, strict=True)
        )


def concat_channels(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the channels, as ``torch.cat(tensors, 1)``.

    The UNet's skips: PyTorch's ``cat`` back-propagates a strided slice of its gradient into each
    input, and on such a gradient BatchNorm's CPU backward (the decoder block before each
    concatenation) ran ~25x slower than on a dense one (docs/speed.md); here each input gets a
    dense gradient in its own layout, one copy.
    """
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
        return torch.cat(tensors, 1)
    return _ConcatChannels.apply(*tensors)


def dcgan_trunk_layers(image_size: int, channels: int, width: int) -> tuple[list[nn.Module], int]:
    """The convolutional trunk of a DCGAN encoder: Conv(4, s2) blocks from ``image_size`` down to
    4x4, widths doubling from ``width``, BatchNorm on all but the first, LeakyReLU(0.2).

    Returns the layers and the width of the final (N, width, 4, 4) map.
    """
    check_image_size(image_size)
    layers: list[nn.Module] = [
        DenseFastConv2d(channels, width, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, inplace=True),
    ]
    size, current = image_size // 2, width
    while size > 4:
        layers += [
            DenseFastConv2d(current, current * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(current * 2),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        current *= 2
        size //= 2
    return layers, current


class DCGANEncoder(nn.Module):
    """Image -> feature vector: Conv(4, s2) blocks halving the resolution down to 4x4, widths
    doubling from ``width``, then a 4x4 valid convolution to ``out_features`` channels at 1x1.

    Returns a tensor of shape (N, out_features, 1, 1).
    """

    def __init__(self, image_size: int, channels: int, width: int, out_features: int):
        super().__init__()
        layers, current = dcgan_trunk_layers(image_size, channels, width)
        layers.append(DenseFastConv2d(current, out_features, 4, 1, 0, bias=False))
        self.layers = nn.Sequential(*layers)
        self.final_width = current

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DCGANDecoder(nn.Module):
    """Latent (N, in_features, 1, 1) -> image: a 4x4 transposed convolution, then ConvTranspose
    (4, s2) blocks doubling the resolution and halving the width, Tanh output in [-1, 1]."""

    def __init__(self, image_size: int, channels: int, width: int, in_features: int):
        super().__init__()
        check_image_size(image_size)
        current, size = width // 2, 4
        while size != image_size:
            current *= 2
            size *= 2
        layers: list[nn.Module] = [
            DenseFastConvTranspose2d(in_features, current, 4, 1, 0, bias=False),
            nn.BatchNorm2d(current),
            nn.ReLU(inplace=True),
        ]
        size = 4
        while size < image_size // 2:
            layers += [
                DenseFastConvTranspose2d(current, current // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(current // 2),
                nn.ReLU(inplace=True),
            ]
            current //= 2
            size *= 2
        layers += [DenseFastConvTranspose2d(current, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class DCGANDiscriminator(nn.Module):
    """The DCGAN discriminator (Radford et al., 2016) of GANomaly and AnoGAN.

    ``features``: the DCGAN trunk down to a (N, C, 4, 4) map, C = ndf * image_size / 8; ``classifier``: a 4x4 valid
    convolution of that map to one real/fake logit. The features used for feature matching are
    the flattened 4x4 map, the layer below the classifier, as in the official GANomaly code.
    """

    def __init__(self, image_size: int, channels: int, ndf: int):
        super().__init__()
        layers, width = dcgan_trunk_layers(image_size, channels, ndf)
        self.features = nn.Sequential(*layers)
        self.classifier = DenseFastConv2d(width, 1, 4, 1, 0, bias=False)
        self.feature_size = width * 16

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logit, features)`` of shapes (N,) and (N, feature_size)."""
        features = self.features(x)
        return self.classifier(features).flatten(), features.flatten(1)
