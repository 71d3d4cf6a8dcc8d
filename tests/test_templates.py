"""Prompt template sets: sizes, contents and the name/list resolver."""

import pytest

from groupvit.errors import ConfigError
from groupvit.text.templates import TEMPLATES, get_templates


def test_set_sizes_and_names():
    sizes = {name: len(t) for name, t in TEMPLATES.items()}
    assert sizes == {"full": 80, "subset": 7, "simple": 1, "identity": 1}
    assert TEMPLATES["simple"] == ("a photo of a {}.",)
    assert TEMPLATES["identity"] == ("{}",)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_each_template_has_one_slot_and_is_distinct(name):
    templates = TEMPLATES[name]
    assert len(set(templates)) == len(templates)
    for template in templates:
        assert template.count("{}") == 1
        assert "dog" in template.format("dog")


def test_full_set_known_members_and_order():
    full = TEMPLATES["full"]
    assert full[0] == "a bad photo of a {}."
    assert full[1] == "a photo of many {}."
    assert full[-1] == "a tattoo of the {}."
    assert "a photo of a {}." in full and "itap of my {}." in full and "a {} in a video game." in full


def test_subset_is_the_groupvit_seven():
    assert TEMPLATES["subset"] == (
        "itap of a {}.",
        "a bad photo of a {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    )
    assert set(TEMPLATES["subset"]) <= set(TEMPLATES["full"])
    assert set(TEMPLATES["simple"]) <= set(TEMPLATES["full"])


def test_get_templates():
    assert get_templates("subset") is TEMPLATES["subset"]
    assert get_templates(["a {} on a table.", "{}"]) == ("a {} on a table.", "{}")
    assert get_templates(("literal {{braces}} and {}",)) == ("literal {{braces}} and {}",)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("ful", "choose one of"),
        ([], "non-empty"),
        (["no slot here"], "exactly once"),
        (["{} and {}"], "exactly once"),
        (["a {} {named}"], "other format fields"),
        ([3], "must be a str"),
        (42, "set name or a non-empty list"),
    ],
)
def test_get_templates_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        get_templates(bad)
