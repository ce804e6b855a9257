"""The model rewritten for inference into the same function, before the export traces it
(:func:`inference_rewrites`; each rewrite is checked on images before anything is written):

* **BatchNorm folded** into the convolution before it (eval mode: an affine map per channel);
* **dense one-pixel layers** (:class:`~skipganomaly.models.blocks.DenseFastConv2d` at the 1x1 end
  of the networks) as matrix products with their weights cut once, instead of cut per call;
* **small maps as one matrix product**: a convolution with at most 4 output pixels (a transposed
  one with at most 4 input pixels) as one product over the batch (:class:`PatchConv`,
  :class:`PatchConvTranspose`); ONNX Runtime computes convolutions image by image, too small at
  2x2 to be fast (docs/deployment.md);
* optionally, transposed convolutions as sub-pixel convolutions (:class:`SubPixelConvTranspose`),
  which int8 quantisation covers (measured, not shipped).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..models.blocks import DenseFastConv2d


# --------------------------------------------------------------------------- inference rewrites
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d or ConvTranspose2d in an
    ``nn.Sequential`` into that convolution (the BatchNorm becomes an Identity). Returns how many
    were folded. The model must be in eval mode (running statistics)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = module._modules[first], module._modules[second]
            if (
                isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
                and isinstance(norm, nn.BatchNorm2d)
                and norm.track_running_stats
                and norm.running_mean is not None
            ):
                module._modules[first] = fuse_conv_bn_eval(
                    conv, norm, transpose=isinstance(conv, nn.ConvTranspose2d)
                )
                module._modules[second] = nn.Identity()
                folded += 1
    return folded


class DenseConv(nn.Module):
    """A convolution with a single output pixel as one matrix product, its weight cut once to the
    taps that touch the input (what :class:`DenseFastConv2d` cuts at every call)."""

    def __init__(self, conv: nn.Conv2d, input_hw: tuple[int, int]):
        super().__init__()
        (ph, pw), (h, w) = conv.padding, input_hw
        weight = conv.weight.detach()[:, :, ph : ph + h, pw : pw + w].reshape(conv.out_channels, -1)
        self.weight = nn.Parameter(weight.clone(), requires_grad=False)
        self.bias = (
            None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias).unsqueeze(-1).unsqueeze(-1)


class DenseConvTranspose(nn.Module):
    """A transposed convolution of a 1x1 input as one matrix product (weights cut once)."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
        self.out_shape = (conv.out_channels, kh - 2 * ph, kw - 2 * pw)
        weight = conv.weight.detach()[:, :, ph : kh - ph, pw : kw - pw].reshape(conv.in_channels, -1)
        self.weight = nn.Parameter(weight.t().contiguous().clone(), requires_grad=False)
        bias = None
        if conv.bias is not None:
            bias = conv.bias.detach().repeat_interleave(self.out_shape[1] * self.out_shape[2])
        self.bias = None if bias is None else nn.Parameter(bias.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias).unflatten(1, self.out_shape)


# Convolutions whose output (and transposed convolutions whose input) has at most this many pixels
# are rewritten as one matrix product over the whole batch: ONNX Runtime's CPU kernels compute a
# convolution image by image, and at 2x2 or 4x4 pixels per image each product is too small to be
# fast (measured 1.5-1.8x faster as one product; larger maps are faster as they are).
SMALL_MAP_PIXELS = 4


class PatchConv(nn.Module):
    """A convolution with a few output pixels as one matrix product: the input windows of every
    output pixel (cut by slicing the padded input) times the flattened weight, batch and pixels
    together as rows."""

    def __init__(self, conv: nn.Conv2d, input_hw: tuple[int, int]):
        super().__init__()
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        h, w = input_hw
        self.out_hw = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        self.kernel, self.stride, self.pad = (kh, kw), (sh, sw), (pw, pw, ph, ph)
        self.out_channels = conv.out_channels
        self.weight = nn.Parameter(
            conv.weight.detach().reshape(conv.out_channels, -1).t().contiguous(), requires_grad=False
        )
        self.bias = (
            None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, self.pad)
        (kh, kw), (sh, sw), (ho, wo) = self.kernel, self.stride, self.out_hw
        windows = [
            padded[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw].flatten(1)
            for i in range(ho)
            for j in range(wo)
        ]
        y = torch.stack(windows, 1) @ self.weight  # (N, pixels, out_channels)
        if self.bias is not None:
            y = y + self.bias
        return y.transpose(1, 2).unflatten(2, (ho, wo))


class PatchConvTranspose(nn.Module):
    """A transposed convolution of a few input pixels as one matrix product (every input pixel
    times the flattened weight: its k x k patch of every output channel), then each patch added
    at its place in the output (pad and add) and the padding cropped."""

    def __init__(self, conv: nn.ConvTranspose2d, input_hw: tuple[int, int]):
        super().__init__()
        self.kernel, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.input_hw = input_hw
        self.out_channels = conv.out_channels
        self.weight = nn.Parameter(
            conv.weight.detach().reshape(conv.in_channels, -1).contiguous(), requires_grad=False
        )
        self.bias = (
            None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw), (h, w) = self.kernel, self.stride, self.padding, self.input_hw
        full_h, full_w = (h - 1) * sh + kh, (w - 1) * sw + kw
        patches = x.flatten(2).transpose(1, 2) @ self.weight  # (N, pixels, out_channels * kh * kw)
        out = None
        for i in range(h):
            for j in range(w):
                patch = patches[:, i * w + j].unflatten(1, (self.out_channels, kh, kw))
                placed = F.pad(patch, (j * sw, full_w - kw - j * sw, i * sh, full_h - kh - i * sh))
                out = placed if out is None else out + placed
        out = out[:, :, ph : full_h - ph, pw : full_w - pw]
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out


def _phase_taps(kernel: int, stride: int, padding: int) -> tuple[list[list[tuple[int, int]]], int, int]:
    """Per output phase a (output index s*m + a) of a transposed convolution, the (input offset d,
    kernel tap k) pairs with y[s*m + a] = sum x[m + d] w[k]; and the smallest and largest offset."""
    phases = [
        [((a + padding - k) // stride, k) for k in range(kernel) if (a + padding - k) % stride == 0]
        for a in range(stride)
    ]
    offsets = [d for taps in phases for d, _ in taps]
    return phases, min(offsets), max(offsets)


class SubPixelConvTranspose(nn.Module):
    """``ConvTranspose2d(kernel k, stride s, padding p)`` with ``k - 2p == s`` as one ``Conv2d``
    computing the s*s output phases as channels, then ``pixel_shuffle``: the same products (and
    some with zero weights), as a plain convolution, which int8 quantisation covers (ONNX
    Runtime has no quantised ``ConvTranspose`` kernel on CPUs)."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        (kh, kw), (s, _), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        rows, low_h, high_h = _phase_taps(kh, s, ph)
        cols, low_w, high_w = _phase_taps(kw, s, pw)
        source = conv.weight.detach()  # (in, out, kh, kw)
        cin, cout = conv.in_channels, conv.out_channels
        weight = torch.zeros(cout, s, s, cin, high_h - low_h + 1, high_w - low_w + 1, dtype=source.dtype)
        for a, taps_h in enumerate(rows):
            for b, taps_w in enumerate(cols):
                for dh, th in taps_h:
                    for dw, tw in taps_w:
                        weight[:, a, b, :, dh - low_h, dw - low_w] = source[:, :, th, tw].t()
        # output channel c*s*s + a*s + b is phase (a, b) of channel c, as pixel_shuffle expects
        self.weight = nn.Parameter(weight.flatten(0, 2), requires_grad=False)
        bias = None if conv.bias is None else conv.bias.detach().repeat_interleave(s * s)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.stride = s
        self.pad = (-low_w, high_w, -low_h, high_h)  # F.pad order: left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.pad
        if left == right and top == bottom:  # the convolution's own padding: no separate Pad node
            y = F.conv2d(x, self.weight, self.bias, padding=(top, left))
        else:
            y = F.conv2d(F.pad(x, self.pad), self.weight, self.bias)
        return F.pixel_shuffle(y, self.stride)


def _sub_pixel_applies(conv: nn.ConvTranspose2d) -> bool:
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    return sh == sw and sh > 1 and kh - 2 * ph == sh and kw - 2 * pw == sw


def _plain_geometry(conv: nn.Module) -> bool:
    return (
        conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and getattr(conv, "output_padding", (0, 0)) == (0, 0)
    )


def _input_shapes(model: nn.Module, run) -> dict[str, set[tuple[int, ...]]]:
    """The per-image input shape each convolution saw while ``run()`` ran."""
    seen: dict[str, set[tuple[int, ...]]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):

            def record(_module, args, name=name):
                seen.setdefault(name, set()).add(tuple(args[0].shape[1:]))

            handles.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inference_rewrites(
    model: nn.Module, run, *, small_maps: bool = True, sub_pixel: bool = False
) -> tuple[nn.Module, dict[str, int]]:
    """A copy of ``model`` (eval mode) rewritten for inference into the same function (see the
    module docstring); ``run(copy)`` runs it once on sample images to learn each layer's input
    size. ``small_maps``: layers on maps of at most :data:`SMALL_MAP_PIXELS` pixels as one matrix
    product; ``sub_pixel``: the other transposed convolutions as sub-pixel convolutions. Returns
    the copy and how many layers each rewrite changed."""
    model = copy.deepcopy(model).eval()
    counts = {
        "batchnorm_folded": fold_batchnorm(model),
        "dense_one_pixel": 0,
        "small_map_matmul": 0,
        "sub_pixel_conv_transpose": 0,
    }
    shapes = _input_shapes(model, lambda: run(model))
    for name, module in list(model.named_modules()):
        if name not in shapes or len(shapes[name]) != 1 or not _plain_geometry(module):
            continue
        (shape,) = shapes[name]
        hw = shape[-2:]
        if isinstance(module, nn.Conv2d):
            (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
            out_pixels = ((hw[0] + 2 * ph - kh) // sh + 1) * ((hw[1] + 2 * pw - kw) // sw + 1)
            if (
                isinstance(module, DenseFastConv2d)
                and module._dense_window(torch.empty(1, *shape)) is not None
            ):
                _replace(model, name, DenseConv(module, hw))
                counts["dense_one_pixel"] += 1
            elif small_maps and out_pixels <= SMALL_MAP_PIXELS:
                _replace(model, name, PatchConv(module, hw))
                counts["small_map_matmul"] += 1
        elif isinstance(module, nn.ConvTranspose2d):
            (kh, kw), (ph, pw) = module.kernel_size, module.padding
            if hw == (1, 1) and kh - 2 * ph >= 1 and kw - 2 * pw >= 1:
                _replace(model, name, DenseConvTranspose(module))
                counts["dense_one_pixel"] += 1
            elif small_maps and hw[0] * hw[1] <= SMALL_MAP_PIXELS:
                _replace(model, name, PatchConvTranspose(module, hw))
                counts["small_map_matmul"] += 1
            elif sub_pixel and _sub_pixel_applies(module):
                _replace(model, name, SubPixelConvTranspose(module))
                counts["sub_pixel_conv_transpose"] += 1
    return model, counts
