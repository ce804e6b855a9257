"""Comparing floats computed by differently parallelised code paths, with messages that show the
numbers.

Two computations of the same value in float32 that add their terms in another order (another
thread count, AVX2 against AVX-512 kernels, DDP's all-reduce against a sum in Python, a fast path
against the library kernel) differ by rounding: at most a few units of 1e-7 of the magnitude of
the terms summed, which, after cancellation, can be far larger than the result itself. So a
tolerance is set against the scale of the tensor compared (``scale_atol`` times its largest
magnitude) as well as elementwise (``rtol``), and a comparison that fails says by how much, where
and for how many elements, so one failing on another CPU can be judged from its message alone.

Comparisons of one code path run twice (determinism, bit-equal resumption) stay exact
(``torch.equal``); each says so where it is made.

``SKIPGANOMALY_TOLERANCE_LOG=FILE`` appends, for every comparison, the share of its tolerance
used (the largest difference over the allowed one): how close a machine or a thread setting comes
to a limit, measured without changing any test.
"""

from __future__ import annotations

import os

import numpy as np
import torch


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def difference_report(actual, expected, *, rtol: float, atol: float = 0.0, scale_atol: float = 0.0) -> dict:
    """The numbers of a comparison: the allowed difference is ``atol + scale_atol * max|expected|
    + rtol * |expected|`` per element."""
    a, e = _as_tensor(actual), _as_tensor(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shapes differ: {tuple(a.shape)} against {tuple(e.shape)}")
    scale = float(e.abs().max()) if e.numel() else 0.0
    diff = (a - e).abs()
    allowed = atol + scale_atol * scale + rtol * e.abs()
    nan_mismatch = torch.isnan(a) != torch.isnan(e)
    over = (diff > allowed) & ~(torch.isnan(a) & torch.isnan(e))
    over |= nan_mismatch
    finite = torch.nan_to_num(diff, nan=0.0)
    share = finite / allowed.clamp_min(1e-300)
    worst = int(share.argmax()) if a.numel() else 0  # the element nearest to (or furthest over) its limit
    nonzero = e.abs() > 0
    relative = torch.where(
        nonzero, finite / e.abs().clamp_min(1e-300), torch.where(finite > 0, torch.inf, 0.0)
    )
    used = float(share.max()) if a.numel() else 0.0
    return {
        "elements": a.numel(),
        "over": int(over.sum()),
        "max_abs": float(finite.max()) if a.numel() else 0.0,
        "abs_at_worst": float(finite.reshape(-1)[worst]) if a.numel() else 0.0,
        "where": tuple(int(i) for i in np.unravel_index(worst, tuple(a.shape))) if a.numel() else (),
        "max_rel": float(relative.max()) if a.numel() else 0.0,
        "scale": scale,
        "allowed_at_worst": float(allowed.reshape(-1)[worst]) if a.numel() else 0.0,
        "share_of_tolerance": used,
    }


def assert_close(
    actual, expected, *, rtol: float, atol: float = 0.0, scale_atol: float = 0.0, name: str = ""
):
    """Assert ``|actual - expected| <= atol + scale_atol * max|expected| + rtol * |expected|``
    elementwise (NaN only where the other is NaN); the message gives the numbers."""
    r = difference_report(actual, expected, rtol=rtol, atol=atol, scale_atol=scale_atol)
    log = os.environ.get("SKIPGANOMALY_TOLERANCE_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(
                f"{os.environ.get('PYTEST_CURRENT_TEST', '?')}\t{name}\t{r['share_of_tolerance']:.3g}\n"
            )
    if r["over"]:
        raise AssertionError(
            f"{name or 'values'}: {r['over']} of {r['elements']} elements differ beyond the tolerance; "
            f"worst at {r['where']}: {r['abs_at_worst']:.3g} against {r['allowed_at_worst']:.3g} allowed "
            f"({r['share_of_tolerance']:.3g} x the tolerance); max abs difference {r['max_abs']:.3g}, max rel "
            f"difference {r['max_rel']:.3g}; tolerance rtol={rtol:g}, atol={atol:g}, scale_atol={scale_atol:g} "
            f"x max|expected| {r['scale']:.3g}"
        )
