"""Defaults that the library and the CLI's options both read (no heavy imports here, so that
``geolrm --help`` stays fast)."""

from __future__ import annotations

#: GeoLRM input size for views with the user's own cameras.
DEFAULT_SIZE = 448
#: GeoLRM input size of each rig's views, as the official scripts resize them:
#: ``run_geolrm_zero123.py:170`` (``v2.functional.resize(images, 448, ...)``) and
#: ``run_geolrm_sv3d.py:103`` (``resize(images, 560, ...)``).
RIG_INPUT_SIZE: dict[str, int] = {"zero123pp": 448, "sv3d": 560}
#: GeoLRM's Gaussians with a lower opacity are dropped before saving and rendering, as the
#: official ``save_ply`` does (``src/models/renderer/gaussian_renderer.py:184-185`` keeps
#: ``opacity >= 0.005``). 0 keeps all.
MIN_OPACITY = 0.005
