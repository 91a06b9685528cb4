"""Looking at results in a browser.

* :mod:`~pipelines.viewer.scene` -- what is shown (Gaussians, mesh, cameras) and its frame;
* :mod:`~pipelines.viewer.server` -- the interactive viewer, built on viser;
* :mod:`~pipelines.viewer.static` -- a self-contained HTML page that opens from ``file://``.

viser is an optional dependency (``pip install 'geolrm[viewer]'``); the static page needs
nothing but the browser.
"""

from pipelines.viewer.scene import ViewScene, load_scene, splat_arrays

__all__ = ["ViewScene", "load_scene", "splat_arrays"]
