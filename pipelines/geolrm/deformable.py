"""Deformable sampling of every view at once, differentiable: GeoLRM's cross-attention core.

Each query s has, per head h, level l and point p, one offset and one attention weight shared by
all views; in view v it samples the view's value map bilinearly at the reference point
``reference[v, s]`` plus that offset:

    out[v, s, h] = Σ_{l,p} weights[s,h,l,p] · bilinear(value[v, level l, h], ref[v,s] + off/(W_l,H_l))

with the mmcv / ``grid_sample(align_corners=False, padding_mode='zeros')`` semantics (pixel
x = loc_x·W_l - 0.5, zeros outside, far or non-finite points contribute nothing).

On CPU (float32) :class:`SampleViews` runs compiled kernels for the forward and
the backward (gradients of value, offsets, weights and reference points, no per-point
intermediates kept); elsewhere one ``embedding_bag`` over all views does it and autograd gives the
backward. The per-view torch version in ``model._deformable_sample_torch`` is the readable
reference both are tested against.

Shapes: B batch, V views, L = Σ_l h_l·w_l value rows (levels concatenated), Hc heads, C channels
per head, S queries, Lv levels, P points per level.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from pipelines import hugepages
from pipelines.numba_jit import cached_njit


def sample_views(
    value: torch.Tensor,
    spatial_shapes: tuple[tuple[int, int], ...],
    reference: torch.Tensor,
    offsets: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable sampling of all views (fp32; differentiable in every input).

    Args:
        value: [B, V, L, Hc, C] per-head values of each view (channels last, as ``value_proj``
            writes them).
        spatial_shapes: (h, w) per level; Σ h·w = L.
        reference: [B, V, S, 2] normalised (u, v) reference point of each query in each view.
        offsets: [B, S, Hc, Lv, P, 2] offsets in pixels of each level, (x, y), for all views.
        weights: [B, S, Hc, Lv, P] attention weights, for all views.
    Returns:
        [B, V, S, Hc·C], channel = head·C + c.
    """
    if value.device.type == "cpu" and value.dtype == torch.float32:
        return SampleViews.apply(value, spatial_shapes, reference, offsets, weights)
    return _sample_views_torch(value, spatial_shapes, reference, offsets, weights)


# ============================================================================ torch (any device)


def _sample_views_torch(value, spatial_shapes, reference, offsets, weights):
    """All views in one ``embedding_bag``: each query-view-head bag holds Lv·P·4 taps whose
    per-sample weights are bilinear weight × attention weight; rows index ``value`` as it lies
    ([B·V·L·Hc, C]), so nothing is copied. Autograd differentiates it (weights through
    ``per_sample_weights``, offsets through the bilinear weights)."""
    B, V, L, Hc, C = value.shape
    S = reference.shape[2]
    table = value.reshape(B * V * L * Hc, C)
    itype = torch.int32 if table.shape[0] < 2**31 else torch.int64
    dev = value.device
    # row of (b, v, position 0, head h): ((b·V + v)·L)·Hc + h; a position adds Hc
    base = (torch.arange(B * V, device=dev, dtype=itype) * (L * Hc)).view(B, V, 1, 1, 1)
    base = base + torch.arange(Hc, device=dev, dtype=itype).view(1, 1, 1, Hc, 1)
    ref = reference[:, :, :, None, None, :]  # [B, V, S, 1, 1, 2]
    idx_all, w_all = [], []
    start = 0
    for lvl, (h, w) in enumerate(spatial_shapes):
        size = offsets.new_tensor([w, h])
        loc = ref + offsets[:, None, :, :, lvl] / size  # [B, V, S, Hc, P, 2]
        a = weights[:, None, :, :, lvl]  # [B, 1, S, Hc, P]
        ix = ((loc[..., 0] * 2 - 1 + 1) * w - 1) / 2
        iy = ((loc[..., 1] * 2 - 1 + 1) * h - 1) / 2
        # far-away / non-finite points: park them outside (all taps then have zero weight)
        ix = torch.nan_to_num(ix, nan=-2.0, posinf=w + 1.0, neginf=-2.0).clamp(-2.0, w + 1.0)
        iy = torch.nan_to_num(iy, nan=-2.0, posinf=h + 1.0, neginf=-2.0).clamp(-2.0, h + 1.0)
        x0, y0 = ix.detach().floor(), iy.detach().floor()
        wx1, wy1 = ix - x0, iy - y0
        for dy, wy in ((0, 1 - wy1), (1, wy1)):
            for dx, wx in ((0, 1 - wx1), (1, wx1)):
                xi, yi = x0 + dx, y0 + dy
                valid = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
                pos = (start + yi * w + xi).to(itype) * Hc
                idx_all.append(torch.where(valid, base + pos, 0))
                w_all.append(torch.where(valid, wx * wy * a, 0))
        start += h * w
    idx = torch.cat(idx_all, dim=-1).view(B * V * S * Hc, -1)
    wts = torch.cat(w_all, dim=-1).view(B * V * S * Hc, -1)
    out = F.embedding_bag(idx, table, per_sample_weights=wts, mode="sum")
    return out.view(B, V, S, Hc * C)


# ============================================================================ CPU kernels


def _flat(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The storage under ``t`` as a flat numpy array starting at t's first element, and t's
    strides in elements (the kernels index it themselves, so views need no copy)."""
    span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True) if n > 0)
    flat = t.as_strided((span,), (1,))
    return flat.numpy(), np.asarray(t.stride(), dtype=np.int64)


def _cpu_args(value, spatial_shapes, reference, offsets, weights):
    """Numpy views of the kernel inputs, plus the level tables and the query visiting order."""
    shapes = np.asarray(spatial_shapes, dtype=np.int64).reshape(-1, 2)
    starts = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]]).astype(np.int64)
    # visit the queries of each view row by row of its coarsest level: nearby samples, cache hits
    h_c, w_c = spatial_shapes[-1]
    ref = reference.detach().nan_to_num(0.0).clamp(-1.0, 2.0)
    key = (ref[..., 1] * h_c).floor() * (4 * w_c) + ref[..., 0] * w_c
    order = key.argsort(dim=-1).to(torch.int64)
    value = value.detach()
    if value.stride(-1) != 1:
        value = value.contiguous()
    return (
        *_flat(value),
        shapes,
        starts,
        reference.detach().contiguous().numpy(),
        _normalised(offsets.detach(), spatial_shapes).numpy(),
        weights.detach().contiguous().numpy(),
        order.numpy(),
    )


def _normalised(offsets: torch.Tensor, spatial_shapes) -> torch.Tensor:
    """Offsets in pixels -> in normalised image units, offset / (W_l, H_l) per level (the
    same for every view, so computed once). [B, S, Hc, Lv, P, 2] -> same, contiguous."""
    wh = offsets.new_tensor([[w, h] for h, w in spatial_shapes])  # [Lv, 2]
    return (offsets / wh[:, None, :]).contiguous()


class SampleViews(torch.autograd.Function):
    """:func:`sample_views` on CPU: numba kernels for the forward and the backward."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, reference, offsets, weights):
        B, V, L, Hc, C = value.shape
        args = _cpu_args(value, spatial_shapes, reference, offsets, weights)
        out = hugepages.empty(B, V, reference.shape[2], Hc * C, dtype=value.dtype)
        _kernels(C)[0](*args, out.view(-1).numpy())
        ctx.spatial_shapes = spatial_shapes
        ctx.save_for_backward(value, reference, offsets, weights)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        value, reference, offsets, weights = ctx.saved_tensors
        B, V, L, Hc, C = value.shape
        need = ctx.needs_input_grad
        args = _cpu_args(value, ctx.spatial_shapes, reference, offsets, weights)
        grad_value = torch.zeros_like(value, memory_format=torch.contiguous_format)
        if not need[0]:
            grad_value = value.new_zeros(0)
        grad_offsets = torch.zeros_like(offsets)
        grad_weights = torch.zeros_like(weights)
        S = reference.shape[2]
        grad_ref = value.new_zeros((B, V, S, Hc, 2) if need[2] else (0, 0, 0, 0, 0))
        _kernels(C)[1](
            *args,
            grad_out.contiguous().view(-1).numpy(),
            grad_value.view(-1).numpy(),
            grad_offsets.numpy(),
            grad_weights.numpy(),
            grad_ref.numpy(),
        )
        return (
            grad_value if need[0] else None,
            None,
            grad_ref.sum(3) if need[2] else None,
            grad_offsets if need[3] else None,
            grad_weights if need[4] else None,
        )


_U = np.uint64  # unsigned flat indices: numba then emits no negative-index wraparound


@njit(inline="always")
def _taps(rx, ry, ox, oy, hh, ww, st):
    """The four bilinear taps (x0,y0), (x1,y0), (x0,y1), (x1,y1) of one point at reference
    (rx, ry) + normalised offset (ox, oy) on a level of hh x ww rows starting at row st:
    (inside, x0, y0, rows r00, r01, r10, r11, weights wx0, wx1, wy0, wy1). inside is False when
    no tap is in the image (also NaN / far points); a tap outside gets a zero x or y weight
    and a clamped (valid) row."""
    one, two, half, zero = np.float32(1.0), np.float32(2.0), np.float32(0.5), np.float32(0.0)
    fw, fh = np.float32(ww), np.float32(hh)
    # the float32 steps of 2·loc-1 and grid_sample's unnormalise
    gx = (rx + ox) * two - one
    gy = (ry + oy) * two - one
    ix = ((gx + one) * fw - one) * half
    iy = ((gy + one) * fh - one) * half
    if not (ix > -one and ix < fw and iy > -one and iy < fh):
        return False, 0, 0, 0, 0, 0, 0, zero, zero, zero, zero
    x0 = int(ix + one) - 1  # floor, since ix > -1
    y0 = int(iy + one) - 1
    wx1, wy1 = ix - np.float32(x0), iy - np.float32(y0)
    wx0, wy0 = one - wx1, one - wy1
    if x0 < 0:
        wx0 = zero
    if x0 + 1 >= ww:
        wx1 = zero
    if y0 < 0:
        wy0 = zero
    if y0 + 1 >= hh:
        wy1 = zero
    xa, xb = max(x0, 0), min(x0 + 1, ww - 1)
    ya, yb = st + max(y0, 0) * ww, st + min(y0 + 1, hh - 1) * ww
    return True, x0, y0, ya + xa, ya + xb, yb + xa, yb + xb, wx0, wx1, wy0, wy1


@functools.cache
def _kernels(C: int):
    """(forward, backward) kernels for C channels per head (a compile-time constant, so the
    channel loops become a few SIMD instructions). Cached on disk by numba after the first
    compile. Both run one (batch, head) pair per thread, so the backward's scatter into the
    value gradient and its sums over views need no atomics."""
    opts = {"parallel": True, "error_model": "numpy", "boundscheck": False}

    @cached_njit(fastmath={"contract"}, **opts)
    def forward(vals, vstr, shapes, starts, ref, offsets, weights, order, out):
        # vals: value storage, element (b, v, l, h, c) at b·vstr[0] + v·vstr[1] + l·vstr[2] +
        # h·vstr[3] + c; out: flat [B, V, S, Hc*C]; order [B, V, S] visiting order per view
        B, V, S = ref.shape[0], ref.shape[1], ref.shape[2]
        Hc, Lv, P = weights.shape[2], weights.shape[3], weights.shape[4]
        sl = vstr[2]
        for bh in prange(B * Hc):
            b = bh // Hc
            h = bh - b * Hc
            acc = np.empty(C, dtype=np.float32)
            for v in range(V):
                vb = b * vstr[0] + v * vstr[1] + h * vstr[3]
                ob = ((b * V + v) * S) * (Hc * C) + h * C
                for i in range(S):
                    s = order[b, v, i]
                    rx, ry = ref[b, v, s, 0], ref[b, v, s, 1]
                    for c in range(C):
                        acc[c] = 0
                    for lvl in range(Lv):
                        hh, ww, st = shapes[lvl, 0], shapes[lvl, 1], starts[lvl]
                        for p in range(P):
                            ok, x0, y0, r00, r01, r10, r11, wx0, wx1, wy0, wy1 = _taps(
                                rx, ry, offsets[b, s, h, lvl, p, 0], offsets[b, s, h, lvl, p, 1],
                                hh, ww, st,
                            )  # fmt: skip
                            if not ok:
                                continue
                            a = weights[b, s, h, lvl, p]
                            w00, w01 = a * (wx0 * wy0), a * (wx1 * wy0)
                            w10, w11 = a * (wx0 * wy1), a * (wx1 * wy1)
                            i00, i01 = _U(vb + r00 * sl), _U(vb + r01 * sl)
                            i10, i11 = _U(vb + r10 * sl), _U(vb + r11 * sl)
                            for c in range(C):
                                cu = _U(c)
                                acc[c] += (
                                    w00 * vals[i00 + cu] + w01 * vals[i01 + cu]
                                    + w10 * vals[i10 + cu] + w11 * vals[i11 + cu]
                                )  # fmt: skip
                    o = _U(ob + s * (Hc * C))
                    for c in range(C):
                        out[o + _U(c)] = acc[c]

    @cached_njit(fastmath={"contract", "reassoc", "nsz"}, **opts)
    def backward(
        vals, vstr, shapes, starts, ref, offsets, weights, order,
        grad_out, grad_value, grad_offsets, grad_weights, grad_ref,
    ):  # fmt: skip
        # grad_out: flat [B, V, S, Hc*C]; grad_value: flat contiguous [B, V, L, Hc, C] (or
        # empty: not wanted); grad_ref [B, V, S, Hc, 2] partial sums per head (or empty)
        B, V, S = ref.shape[0], ref.shape[1], ref.shape[2]
        Hc, Lv, P = weights.shape[2], weights.shape[3], weights.shape[4]
        want_value, want_ref = grad_value.shape[0] > 0, grad_ref.shape[0] > 0
        sl = vstr[2]
        L = starts[Lv - 1] + shapes[Lv - 1, 0] * shapes[Lv - 1, 1]
        HC = Hc * C
        for bh in prange(B * Hc):
            b = bh // Hc
            h = bh - b * Hc
            g = np.empty(C, dtype=np.float32)
            for v in range(V):
                vb = b * vstr[0] + v * vstr[1] + h * vstr[3]
                gb = (b * V + v) * L * HC + h * C
                ob = ((b * V + v) * S) * HC + h * C
                for i in range(S):
                    s = order[b, v, i]
                    rx, ry = ref[b, v, s, 0], ref[b, v, s, 1]
                    o = _U(ob + s * HC)
                    for c in range(C):
                        g[c] = grad_out[o + _U(c)]
                    for lvl in range(Lv):
                        hh, ww, st = shapes[lvl, 0], shapes[lvl, 1], starts[lvl]
                        for p in range(P):
                            ok, x0, y0, r00, r01, r10, r11, wx0, wx1, wy0, wy1 = _taps(
                                rx, ry, offsets[b, s, h, lvl, p, 0], offsets[b, s, h, lvl, p, 1],
                                hh, ww, st,
                            )  # fmt: skip
                            if not ok:
                                continue
                            w00, w01, w10, w11 = wx0 * wy0, wx1 * wy0, wx0 * wy1, wx1 * wy1
                            i00, i01 = _U(vb + r00 * sl), _U(vb + r01 * sl)
                            i10, i11 = _U(vb + r10 * sl), _U(vb + r11 * sl)
                            # <grad, tap value> of the four taps (0 for taps outside)
                            d00 = d01 = d10 = d11 = np.float32(0.0)
                            for c in range(C):
                                cu = _U(c)
                                d00 += g[c] * vals[i00 + cu]
                                d01 += g[c] * vals[i01 + cu]
                                d10 += g[c] * vals[i10 + cu]
                                d11 += g[c] * vals[i11 + cu]
                            if x0 < 0:
                                d00 = d10 = np.float32(0.0)
                            if x0 + 1 >= ww:
                                d01 = d11 = np.float32(0.0)
                            if y0 < 0:
                                d00 = d01 = np.float32(0.0)
                            if y0 + 1 >= hh:
                                d10 = d11 = np.float32(0.0)
                            a = weights[b, s, h, lvl, p]
                            grad_weights[b, s, h, lvl, p] += (
                                w00 * d00 + w01 * d01 + w10 * d10 + w11 * d11
                            )
                            gx = a * (wy0 * (d01 - d00) + wy1 * (d11 - d10))
                            gy = a * (wx0 * (d10 - d00) + wx1 * (d11 - d01))
                            grad_offsets[b, s, h, lvl, p, 0] += gx
                            grad_offsets[b, s, h, lvl, p, 1] += gy
                            if want_ref:
                                grad_ref[b, v, s, h, 0] += gx * np.float32(ww)
                                grad_ref[b, v, s, h, 1] += gy * np.float32(hh)
                            if want_value:
                                w00, w01, w10, w11 = a * w00, a * w01, a * w10, a * w11
                                j00, j01 = _U(gb + r00 * HC), _U(gb + r01 * HC)
                                j10, j11 = _U(gb + r10 * HC), _U(gb + r11 * HC)
                                for c in range(C):
                                    grad_value[j00 + _U(c)] += w00 * g[c]
                                for c in range(C):
                                    grad_value[j01 + _U(c)] += w01 * g[c]
                                for c in range(C):
                                    grad_value[j10 + _U(c)] += w10 * g[c]
                                for c in range(C):
                                    grad_value[j11 + _U(c)] += w11 * g[c]

    return forward, backward
