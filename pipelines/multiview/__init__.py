"""Multi-view diffusion: one framed photo -> several views of the object with known cameras.

* :mod:`pipelines.multiview.zero123pp` -- Zero123++ v1.2 (six 320 px views, 3x2 grid), with
  InstantMesh's white-background UNet by default;
* :mod:`pipelines.multiview.sv3d` -- SV3D_p (21 orbit frames at 576 px, pose-conditioned).
* :mod:`pipelines.multiview.rigs` -- both models' camera rigs (imports torch only).

Both are written from diffusers / transformers building blocks (no remote code, no ``sgm``).
Heavy imports (diffusers, transformers) happen inside these submodules only; this file
re-exports nothing, so that importing the rigs loads neither.
"""
