"""VLM backbones. Importing this package registers every family under ``BackboneConfig``.

Adding a family is one file (config + wrapper, registered with
``@BackboneConfig.register_subclass``) plus one import line here.
"""

from vla.models.backbones import paligemma, qwen2_5_vl, smolvlm
from vla.models.backbones.base import Backbone, BackboneConfig
from vla.models.backbones.common import VLMBackbone, VLMConfig

_PRESETS = {"paligemma": paligemma.PRESETS, "qwen2_5_vl": qwen2_5_vl.PRESETS, "smolvlm": smolvlm.PRESETS}


def list_presets() -> dict[str, list[str]]:
    """Family name -> its preset names, e.g. ``{"paligemma": ["paligemma-3b", "tiny"], ...}``."""
    return {family: sorted(presets) for family, presets in sorted(_PRESETS.items())}


__all__ = ["Backbone", "BackboneConfig", "VLMBackbone", "VLMConfig", "list_presets"]
