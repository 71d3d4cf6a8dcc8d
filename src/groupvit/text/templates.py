"""Prompt templates that turn a class name or a noun into a sentence, e.g. ``'a photo of a {}.'``.

Sets, as named by GroupViT:

* ``full``: the 80 ImageNet templates of CLIP's prompt-engineering study. GroupViT formats each
  extracted noun of a caption with one template drawn from these for its multi-label loss.
* ``subset``: 7 of them, used for zero-shot ImageNet classification.
* ``simple``: ``'a photo of a {}.'``, used for zero-shot segmentation.
* ``identity``: ``'{}'``, the bare name.
"""

from __future__ import annotations

from collections.abc import Sequence

from groupvit.errors import ConfigError

_FULL = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# GroupViT's subset has 'a bad photo of a {}.' where CLIP's 7-template ensemble has
# 'a bad photo of the {}.'; the GroupViT one is kept so its ImageNet numbers are reproducible.
_SUBSET = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "full": _FULL,
    "subset": _SUBSET,
    "simple": ("a photo of a {}.",),
    "identity": ("{}",),
}


def get_templates(name_or_list: str | Sequence[str]) -> tuple[str, ...]:
    """Template strings of a named set, or a validated copy of an explicit list.

    Args:
        name_or_list: one of ``TEMPLATES`` (``'full'``, ``'subset'``, ``'simple'``, ``'identity'``), or a
            non-empty sequence of strings that each contain ``'{}'`` exactly once.

    Returns:
        tuple of templates, to be filled with ``template.format(name)``.
    """
    if isinstance(name_or_list, str):
        if name_or_list not in TEMPLATES:
            raise ConfigError(
                f"Unknown template set {name_or_list!r}; choose one of {sorted(TEMPLATES)} or pass a list of "
                "strings containing '{}'."
            )
        return TEMPLATES[name_or_list]
    if not isinstance(name_or_list, Sequence) or len(name_or_list) == 0:
        raise ConfigError("Templates must be a set name or a non-empty list of strings containing '{}'.")
    for template in name_or_list:
        if not isinstance(template, str) or template.count("{}") != 1 or not _formats(template):
            raise ConfigError(
                f"Template {template!r} must be a str containing '{{}}' exactly once and no other "
                "format fields (write literal braces as '{{' and '}}')."
            )
    return tuple(name_or_list)


def _formats(template: str) -> bool:
    """Whether ``template.format(name)`` works, i.e. ``'{}'`` is its only format field."""
    try:
        template.format("")
    except (IndexError, KeyError, ValueError):
        return False
    return True
