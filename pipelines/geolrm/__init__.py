"""GeoLRM reconstruction model (posed views -> 3D Gaussians), compatible with the official weights."""

from pipelines.geolrm.convert import convert_checkpoint
from pipelines.geolrm.model import (
    GeoLRM,
    GeoLRMConfig,
    GeoLRMOutput,
    ProposalConfig,
    ReconstructionConfig,
    gaussians_from_output,
)

__all__ = [
    "GeoLRM",
    "GeoLRMConfig",
    "GeoLRMOutput",
    "ProposalConfig",
    "ReconstructionConfig",
    "convert_checkpoint",
    "gaussians_from_output",
]
