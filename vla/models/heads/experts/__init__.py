"""Expert styles for the flow head, registered by name under ``ExpertConfig``: dit, gemma, smolvla.

Adding a style is one file plus one import line here.
"""

from vla.models.heads.experts import dit, layerwise  # noqa: F401  (registers the styles)
from vla.models.heads.experts.base import ExpertConfig, suffix_self_mask

__all__ = ["ExpertConfig", "suffix_self_mask"]
