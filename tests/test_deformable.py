"""Deformable sampling of all views at once (pipelines.geolrm.deformable) against the per-view
torch reference (``model._deformable_sample_torch``, itself checked against ``grid_sample`` in
test_geolrm_model.py): forward values, the numba backward against autograd of the reference,
and the cross-view attention built on it against its per-view loop."""

from __future__ import annotations

import pytest
import torch

from pipelines.geolrm.deformable import (
    SampleViews,
    _cpu_args,
    _kernels,
    _sample_views_torch,
    sample_views,
)
from pipelines.geolrm.model import (
    CrossViewAttention,
    ImageFeatures,
    _deformable_sample_torch,
    _init_weights,
    deformable_sample,
)

SHAPES = ((6, 9), (3, 4))


def random_inputs(B=2, V=3, Hc=3, C=5, S=13, P=4, seed=0, dtype=torch.float32):
    """value, reference, offsets, weights with points inside, outside, NaN and far away."""
    g = torch.Generator().manual_seed(seed)
    L = sum(h * w for h, w in SHAPES)
    value = torch.randn(B, V, L, Hc, C, generator=g)
    ref = torch.rand(B, V, S, 2, generator=g) * 1.3 - 0.15  # some outside the image
    ref[0, 0, 0] = torch.tensor([float("nan"), 0.5])
    ref[0, 1, 1] = torch.tensor([1e30, -1e30])
    ref[B - 1, V - 1, 2] = torch.tensor([float("inf"), 0.3])
    offsets = torch.randn(B, S, Hc, len(SHAPES), P, 2, generator=g) * 2
    offsets[0, 3, 0, 0, 0] = torch.tensor([float("nan"), 1.0])
    weights = torch.rand(B, S, Hc, len(SHAPES), P, generator=g)
    return tuple(t.to(dtype) for t in (value, ref, offsets, weights))


def per_view_reference(value, ref, offsets, weights):
    """[B, V, S, Hc·C]: the torch reference, one view at a time."""
    views = [
        _deformable_sample_torch(value[:, v], SHAPES, ref[:, v], offsets, weights)
        for v in range(value.shape[1])
    ]
    return torch.stack(views, dim=1)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.detach().double() - b.detach().double()).abs().max())


@pytest.mark.parametrize("C", [5, 8, 24])
@pytest.mark.parametrize("path", ["numba", "torch"])
def test_all_views_match_per_view_reference(path, C):
    value, ref, offsets, weights = random_inputs(C=C)
    fn = SampleViews.apply if path == "numba" else _sample_views_torch
    out = fn(value, SHAPES, ref, offsets, weights)
    expected = per_view_reference(value, ref, offsets, weights)
    assert out.shape == (2, 3, 13, 3 * C)
    assert torch.isfinite(out).all()
    assert max_diff(out, expected) < 1e-5
    assert float(expected.abs().max()) > 0.5  # the points do sample something


def test_numba_kernel_reads_strided_values():
    """A value tensor that is a view (heads-major storage, a slice of a wider projection)
    is read in place and gives the same result as its contiguous copy."""
    value, ref, offsets, weights = random_inputs()
    head_major = value.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)
    wide = torch.randn(*value.shape[:3], value.shape[3] + 1, value.shape[4])
    wide[:, :, :, :-1] = value
    expected = sample_views(value, SHAPES, ref, offsets, weights)
    for strided in (head_major, wide[:, :, :, :-1], value[:, 1:]):
        contiguous = strided.contiguous()
        r = ref[:, : strided.shape[1]]
        out = sample_views(strided, SHAPES, r, offsets, weights)
        assert torch.equal(out, sample_views(contiguous, SHAPES, r, offsets, weights))
    assert torch.equal(sample_views(head_major, SHAPES, ref, offsets, weights), expected)


def grads(fn, inputs, grad_out):
    """Gradients of <fn(...), grad_out> w.r.t. value, reference, offsets and weights."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    value, ref, offsets, weights = leaves
    out = fn(value, SHAPES, ref, offsets, weights)
    return torch.autograd.grad((out * grad_out.to(out.dtype)).sum(), leaves)


@pytest.mark.parametrize("path", ["numba", "torch"])
def test_backward_matches_autograd_of_the_reference(path):
    """Gradients of value, offsets (through the bilinear weights), attention weights and
    reference points against float64 autograd of the per-view reference."""
    inputs = random_inputs(B=2, V=3, Hc=2, C=8, S=17, P=3, seed=1)
    out_shape = (2, 3, 17, 16)
    grad_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(2))
    fn = SampleViews.apply if path == "numba" else _sample_views_torch
    got = grads(fn, inputs, grad_out)

    def reference(value, _shapes, ref, offsets, weights):
        return per_view_reference(value, ref, offsets, weights)

    expected = grads(reference, [t.double() for t in inputs], grad_out)
    for name, g, e in zip(("value", "reference", "offsets", "weights"), got, expected, strict=True):
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
        scale = float(e.abs().max())
        assert scale > 0.1, name  # a real gradient, not all zeros
        assert max_diff(g, e) < 2e-5 * max(scale, 1.0), (name, max_diff(g, e), scale)


def test_torch_path_passes_gradcheck():
    """The torch all-view path (other devices) in float64 against finite differences."""
    value, ref, offsets, weights = random_inputs(B=1, V=2, Hc=2, C=3, S=5, P=2, seed=3)
    inputs = [t.double().requires_grad_() for t in (value, ref, offsets, weights)]
    inputs[1] = inputs[1].detach().nan_to_num(0.3).clamp(0, 1).requires_grad_()

    def fn(v, r, o, w):
        return _sample_views_torch(v, SHAPES, r, o, w)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_only_requested_gradients_are_computed():
    value, ref, offsets, weights = random_inputs()
    offsets.requires_grad_()
    out = sample_views(value, SHAPES, ref, offsets, weights)
    (g,) = torch.autograd.grad(out.sum(), [offsets])
    assert g.shape == offsets.shape and float(g.abs().max()) > 0


def test_per_view_sampling_has_a_gradient_on_cpu():
    """``deformable_sample`` on CPU float32 used a forward-only kernel: an input that requires
    grad silently got none. It now takes the differentiable kernel then."""
    value, ref, offsets, weights = random_inputs()
    v0 = value[:, 0].clone().requires_grad_()
    out = deformable_sample(v0, SHAPES, ref[:, 0], offsets, weights)
    assert out.requires_grad
    (g,) = torch.autograd.grad(out.square().sum(), [v0])
    v1 = value[:, 0].clone().requires_grad_()
    ref_out = _deformable_sample_torch(v1, SHAPES, ref[:, 0], offsets, weights)
    (e,) = torch.autograd.grad(ref_out.square().sum(), [v1])
    assert max_diff(out, ref_out) < 1e-5 and max_diff(g, e) < 1e-4
    with torch.no_grad():  # inference keeps the per-view forward kernel
        assert max_diff(deformable_sample(v0, SHAPES, ref[:, 0], offsets, weights), out) < 1e-5


@pytest.fixture
def cross_attention():
    torch.manual_seed(0)
    module = CrossViewAttention(dim=24, feat_dim=10, heads=4, points=3)
    module.apply(_init_weights)
    with torch.no_grad():  # non-trivial offsets, attention and view weights
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    g = torch.Generator().manual_seed(4)
    L = sum(h * w for h, w in SHAPES)
    features = ImageFeatures(torch.randn(2, 3, L, 10, generator=g), SHAPES)
    query = torch.randn(2, 9, 24, generator=g)
    reference = torch.rand(2, 3, 9, 2, generator=g) * 1.2 - 0.1
    return module, query, features, reference


def test_cross_view_attention_matches_its_per_view_loop(cross_attention):
    module, query, features, reference = cross_attention
    with torch.no_grad():
        fused = module(query, features, reference)
        loop = module.forward_per_view(query, features, reference)
        loop_torch = module.forward_per_view(query, features, reference, _deformable_sample_torch)
    assert max_diff(fused, loop) < 1e-5 and max_diff(fused, loop_torch) < 1e-5
    assert max_diff(fused, query) > 0.1


def test_inference_values_equal_the_training_path_bit_for_bit(cross_attention):
    """Without autograd the values are projected in place (into a huge-page buffer when
    large): the same kernel as nn.Linear, so the same bits as the training path."""
    module, query, features, reference = cross_attention
    with torch.no_grad():
        inference = module(query, features, reference)
    training = module(query, features, reference)
    assert training.requires_grad and torch.equal(inference, training.detach())


def test_cross_view_attention_gradients_match_the_reference(cross_attention):
    """Training: parameter, query and feature gradients of the fused module equal autograd
    through the per-view torch reference."""
    module, query, features, reference = cross_attention

    def run(forward):
        module.zero_grad()
        q = query.clone().requires_grad_()
        f = features.feats.clone().requires_grad_()
        out = forward(q, ImageFeatures(f, SHAPES), reference)
        out.square().mean().backward()
        return [q.grad, f.grad] + [p.grad.clone() for p in module.parameters()]

    fused = run(module)
    ref = run(lambda q, f, r: module.forward_per_view(q, f, r, _deformable_sample_torch))
    names = ["query", "features"] + [n for n, _ in module.named_parameters()]
    for name, a, b in zip(names, fused, ref, strict=True):
        scale = float(b.abs().max())
        assert scale > 0, name
        assert max_diff(a, b) < 1e-5 * max(scale, 1.0), (name, max_diff(a, b))


def test_kernels_compile_without_a_cache_dir(numba_without_cache):
    """Where numba can write no cache, the kernels are built uncached (through
    :func:`pipelines.numba_jit.cached_njit`) instead of raising at decoration."""
    forward, _ = _kernels.__wrapped__(5)  # a fresh build, not the process-wide one
    assert numba_without_cache == [True, False, True, False]
    value, ref, offsets, weights = random_inputs(C=5)
    out = torch.empty(2, 3, 13, 15)
    forward(*_cpu_args(value, SHAPES, ref, offsets, weights), out.view(-1).numpy())
    assert torch.equal(out, sample_views(value, SHAPES, ref, offsets, weights))
