"""GroupViT model definition: layers, grouping, vision and text towers, the dual encoder.

This package imports nothing from training, data or I/O.
"""

from groupvit.model.grouping import AssignAttention, Assignment, GroupingBlock
from groupvit.model.groupvit import ContrastiveOutput, GroupViT, ImageEncoding, ProjectionHead
from groupvit.model.text import TextEncoder
from groupvit.model.vision import VisionEncoder, VisionOutput, interpolate_pos_embed

__all__ = [
    "Assignment", "AssignAttention", "ContrastiveOutput", "GroupViT", "GroupingBlock", "ImageEncoding",
    "ProjectionHead", "TextEncoder", "VisionEncoder", "VisionOutput", "interpolate_pos_embed",
]
