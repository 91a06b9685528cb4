"""LPIPS (VGG16, v0.1) in plain torch: a hand-computed case with the real lpips heads, a
functional twin with random weights, the distance's properties and the weight loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lpips_weights import HEADS
from lpips_weights import heads as _heads
from lpips_weights import random_trunk as _random_trunk

from pipelines.errors import InputError
from pipelines.lpips import EPS, LPIPS, SCALE, SHIFT, TAPS, VGG16_LAYERS, load_lpips


def _reference(state, heads, x, y):
    """LPIPS written out with F.conv2d over the flat state dict."""
    shift = torch.tensor(SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(SCALE).view(1, 3, 1, 1)

    def maps(z):
        h, out, i = (z - shift) / scale, [], 0
        for v in VGG16_LAYERS:
            if v == "M":
                h, i = F.max_pool2d(h, 2), i + 1
                continue
            h = F.relu(
                F.conv2d(h, state[f"features.{i}.weight"], state[f"features.{i}.bias"], 1, 1)
            )
            if i + 1 in TAPS:
                out.append(h / (torch.linalg.vector_norm(h, dim=1, keepdim=True) + EPS))
            i += 2
        return out

    return sum(
        ((a - b).square() * w.view(1, -1, 1, 1)).sum(1).mean(dim=(1, 2))
        for a, b, w in zip(maps(x), maps(y), heads, strict=True)
    )


def test_heads_fixture_layout() -> None:
    heads = _heads()
    assert sorted(heads) == [f"lin{k}.model.1.weight" for k in range(5)]
    assert [heads[f"lin{k}.model.1.weight"].shape[1] for k in range(5)] == [64, 128, 256, 512, 512]
    assert all(float(w.min()) >= 0 for w in heads.values())  # lpips trains them clamped >= 0


def test_hand_computed_indicator_case() -> None:
    """Every convolution passes channel 0 through its centre tap (weight 1, bias 0), all other
    weights 0. Then each tap's normalised map is 1 where the (scaled) red channel is > 0 and 0
    elsewhere, max-pooled. White vs. an image whose left half is black: the maps differ on half
    the pixels at 16, 8, 4 and 2 px, and not at all at 1 px (relu5_3: one max over everything),
    so the distance is 0.5 * (w0 + w1 + w2 + w3) with w_k the heads' channel-0 weights."""
    m = LPIPS()
    with torch.no_grad():
        for layer in m.features:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.zero_()
                layer.bias.zero_()
                layer.weight[0, 0, 1, 1] = 1.0
    m.load_heads(_heads())
    white = torch.ones(1, 3, 16, 16)
    half = white.clone()
    half[..., :8] = -1.0
    w = [float(_heads()[f"lin{k}.model.1.weight"][0, 0]) for k in range(5)]
    want = 0.5 * (w[0] + w[1] + w[2] + w[3])
    got = float(m(white, half))
    assert got == pytest.approx(want, rel=1e-6)
    assert float(m(half, white)) == pytest.approx(want, rel=1e-6)


def test_matches_functional_twin_with_random_weights() -> None:
    state = _random_trunk()
    heads = [
        torch.rand(1, c, 1, 1, generator=torch.Generator().manual_seed(c))
        for c in (64, 128, 256, 512, 512)
    ]
    m = LPIPS()
    m.load_trunk(state)
    m.load_heads({f"lin{k}.model.1.weight": h for k, h in enumerate(heads)})
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 40, 36, generator=gen) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 40, 36, generator=gen)).clamp(-1, 1)
    got = m(x, y)
    want = _reference(state, heads, x, y)
    assert got.shape == (2,)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    assert float(got.min()) > 0


def test_distance_properties() -> None:
    m = LPIPS()
    m.load_trunk(_random_trunk(3))
    m.load_heads(_heads())
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 32, 32, generator=gen)
    noise = torch.randn(1, 3, 32, 32, generator=gen)
    assert float(m(x, x, normalize=True)) == 0.0
    d = [float(m(x, (x + s * noise).clamp(0, 1), normalize=True)) for s in (0.02, 0.1, 0.4)]
    assert d[0] < d[1] < d[2]
    # normalize=True is the [0, 1] -> [-1, 1] map
    y = (x + 0.1 * noise).clamp(0, 1)
    assert torch.allclose(m(x, y, normalize=True), m(2 * x - 1, 2 * y - 1))
    # frozen weights, gradient to the image
    y.requires_grad_(True)
    m(x, y, normalize=True).sum().backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in m.parameters())


def test_trunk_loading_names_and_errors(tmp_path) -> None:
    state = _random_trunk(4)
    # timm / torchvision checkpoints: a prefix before "features." and classifier keys
    full = {f"model.{k}": v for k, v in state.items()}
    full["pre_logits.fc1.weight"] = torch.zeros(4, 4)
    m = LPIPS()
    m.load_trunk(full)
    assert torch.equal(m.features[28].weight, state["features.28.weight"])
    del full["model.features.26.bias"]
    with pytest.raises(
        InputError, match=r"lack 1 convolution tensors \(e\.g\. features\.26\.bias\)"
    ):
        LPIPS().load_trunk(full)
    with pytest.raises(InputError, match="lin2.model.1.weight of shape"):
        LPIPS().load_heads({k: v for k, v in _heads().items() if not k.startswith("lin2")})
    with pytest.raises(InputError, match="at least 16 x 16"):
        m(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_load_lpips_from_files_and_registry(tmp_path, monkeypatch) -> None:
    from safetensors.torch import save_file

    trunk = tmp_path / "vgg16.safetensors"
    save_file(_random_trunk(5), str(trunk))
    m = load_lpips(trunk, HEADS)
    assert torch.equal(m.lins[4].weight, _heads()["lin4.model.1.weight"])
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read the weights"):
        load_lpips(bad, HEADS)
    # nothing on disk: the registry's one-line message with the download command
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("GEOLRM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="geolrm weights download vgg16"):
        load_lpips(None, HEADS)
