"""CLIP BPE tokenizer: hand-checked ids, padding/truncation, cleaning, and parity with transformers."""

import gzip
import json
import pickle
import random

import pytest
import torch

from groupvit.errors import ConfigError, InputError
from groupvit.text import tokenizer as tokmod
from groupvit.text.tokenizer import Tokenizer, bytes_to_unicode, clean_text, find_vocab_file, tokenize

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return tokmod.get_default_tokenizer()


def test_vocabulary_layout(tok):
    assert tok.vocab_size == 49408
    assert (tok.sot_id, tok.eot_id) == (SOT, EOT)
    # First ids are the visible ASCII bytes in order, then the same bytes as word ends.
    assert tok.encoder["!"] == 0 and tok.encoder["a"] == 64
    assert tok.encoder["!</w>"] == 256 and tok.encoder["a</w>"] == 320
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == chr(256 + 32)


def test_hand_checked_ids(tok):
    assert tok.encode("a photo of a dog.") == [320, 1125, 539, 320, 1929, 269]
    # Cleaning lower-cases and collapses whitespace, so these give the same ids.
    assert tok.encode("  A   PHOTO of\ta\ndog. ") == [320, 1125, 539, 320, 1929, 269]
    assert tok.encode("") == []
    assert tok.encode("<|endoftext|>") == [EOT]


def test_call_shape_padding_and_special_tokens(tok):
    out = tok(["a photo of a dog.", "", "cat"])
    assert out.dtype == torch.long and out.shape == (3, 77)
    assert out[0, :8].tolist() == [SOT, 320, 1125, 539, 320, 1929, 269, EOT]
    assert out[0, 8:].eq(0).all()
    assert out[1, :2].tolist() == [SOT, EOT] and out[1, 2:].eq(0).all()
    assert tokenize("a photo of a dog.").equal(out[:1])
    assert tok([], context_length=10).shape == (0, 10)
    assert tok("a dog", context_length=2).tolist() == [[SOT, EOT]]


def test_truncation_keeps_eot_last(tok):
    text = " ".join(f"word{i}" for i in range(100))
    ids = tok.encode(text)
    assert len(ids) > 76
    row = tok(text)[0]
    assert row[:76].tolist() == [SOT, *ids[:75]]
    assert row[76].item() == EOT
    short = tok(text, context_length=5)[0].tolist()
    assert short == [SOT, *ids[:3], EOT]
    # Exactly 75 content ids fit with SOT and EOT and need no truncation.
    exact = tok.decode(ids[:75])
    assert tok(exact)[0].tolist() == [SOT, *tok.encode(exact), EOT] and len(tok.encode(exact)) == 75


def test_decode_round_trip(tok):
    for text in ["a photo of a dog", "two cats sleeping on a red sofa", "café au lait"]:
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode(tok(text)[0]) == text
    # Punctuation and each digit are separate words, so they come back space-separated.
    assert tok.decode(tok("A Photo!")[0]) == "a photo !"
    assert tok.decode(tok.encode("sofa 2024")) == "sofa 2 0 2 4"
    assert tok.decode([SOT, 320, EOT, 1929], skip_special_tokens=False) == "<|startoftext|>a <|endoftext|>dog"
    with pytest.raises(InputError, match="outside the vocabulary"):
        tok.decode([49408])


def test_clean_text_hand_checked():
    assert clean_text("  Hello\t\n  WORLD \u3000") == "hello world"
    assert clean_text("Tom &amp;amp; Jerry") == "tom & jerry"
    assert clean_text("&lt;b&gt;Bold&lt;/b&gt;") == "<b>bold</b>"
    assert clean_text("\u201cquoted\u201d") == '"quoted"'
    assert clean_text("cafÃ©") == "café"
    assert clean_text("") == ""


def test_clean_text_printable_ascii_shortcut_matches_ftfy():
    """Printable ASCII without '&' skips ftfy and html.unescape: the result must be what they give."""
    import html
    import random
    import string

    import ftfy

    rng = random.Random(0)
    alphabet = string.printable.replace("&", "")
    texts = ["a red star and a green circle.", "A photo of a cat's ; <b>", "Ã\x80 ''quote'' -- ...", "x" * 300]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 80))) for _ in range(2000)]
    for text in texts:
        full = html.unescape(html.unescape(ftfy.fix_text(text)))
        assert clean_text(text) == " ".join(full.split()).lower(), text


def test_bad_input(tok):
    with pytest.raises(InputError, match=r"texts\[1\] must be a str"):
        tok(["ok", 3])
    with pytest.raises(InputError, match="context_length"):
        tok("x", context_length=1)
    with pytest.raises(InputError, match="context_length"):
        tokenize("x", context_length=77.0)
    with pytest.raises(InputError, match="expects a str"):
        tok.encode(None)
    with pytest.raises(InputError, match="sequence of str"):
        tok(42)


def test_vocab_lookup(tmp_path, monkeypatch):
    default = find_vocab_file()
    assert default.name == "bpe_simple_vocab_16e6.txt.gz"
    monkeypatch.setenv("GROUPVIT_BPE_VOCAB", str(tmp_path / "missing.gz"))
    with pytest.raises(ConfigError, match="GROUPVIT_BPE_VOCAB"):
        find_vocab_file()
    assert find_vocab_file(default) == default
    monkeypatch.setenv("GROUPVIT_BPE_VOCAB", str(default))
    assert Tokenizer().encode("a dog") == [320, 1929]
    monkeypatch.delenv("GROUPVIT_BPE_VOCAB")
    monkeypatch.setattr(tokmod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install openai-clip"):
        find_vocab_file()
    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wt") as f:
        f.write("#version\na b\n")
    with pytest.raises(ConfigError, match="malformed"):
        Tokenizer(bad)


def test_pickle_round_trip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone("a photo of a dog.").equal(tok("a photo of a dog."))


# ---------------------------------------------------------------------------------------------------
# Parity with transformers.CLIPTokenizer built from the same vocabulary file.


def _write_hf_files(vocab_gz, folder):
    """vocab.json (token -> id) and merges.txt ('#version' header, one 'a b' merge a line)."""
    with gzip.open(vocab_gz, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab_json, merges_txt = folder / "vocab.json", folder / "merges.txt"
    vocab_json.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    merges_txt.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_json, merges_txt


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("clip_vocab")
    vocab_json, merges_txt = _write_hf_files(find_vocab_file(), folder)
    # Positional: the first two parameters are the vocab/merges files in transformers 4.x (vocab_file,
    # merges_file) and 5.x (vocab, merges); the 5.x constructor silently ignores vocab_file=/merges_file=.
    hf = transformers.CLIPTokenizer(str(vocab_json), str(merges_txt))
    assert len(hf) == 49408
    return hf


def _official_row(ids, context_length=77):
    """[SOT] + ids + [EOT], truncated with EOT forced last, zero padded."""
    row = [SOT, *ids, EOT]
    if len(row) > context_length:
        row = row[:context_length]
        row[-1] = EOT
    return row + [0] * (context_length - len(row))


def _captions():
    fixed = [
        "",
        "a photo of a dog.",
        "A PHOTO OF A DOG!!!",
        "Two dogs, three cats & 1 bird; all (mostly) asleep... right?!",
        "It's the cat's toy — isn't it? They'll say we'd've known.",
        "Price: $1,299.99 (save 15%) on 2023-05-17 at 10:30am #deal @shop",
        "Café crème brûlée in Zürich, naïve façade, El Niño, São Paulo",
        "東京の夜景 and 北京烤鸭 with 김치 and Москва",
        "Ελληνικά ΟΔΟΣ and العربية and हिन्दी",
        "party time 🎉🐶🍕👍🏽 👨‍👩‍👧 ❤️",
        "Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;single&#39; &amp;amp;",
        "   lots\t\tof\n\nwhitespace   \u00a0 here  ",
        "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ and ﬁne ligatures",
        "curly \u201cquotes\u201d and \u2018apostrophes\u2019",
        "mojibake cafÃ© and donâ€™t",
        "<|startoftext|> special <|endoftext|> tokens in text",
        "www.example.com/path?q=1&x=2 user@mail.org",
        "x" * 300,
        "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
        " ".join(["a very long caption about many things"] * 30),
    ]
    rng = random.Random(0)
    words = (
        "a the photo of dog dogs cat running park beach sunset mountain red blue green big small "
        "people man woman child car street city night view from above 2 10 1999 3.5 x-ray t-shirt "
        "don't it's we're you've I'm they'll he'd café niño résumé über 猫 犬 写真 🐱 🌅 ✨ "
        "&amp; &lt;3 &gt; &quot; ... !? , ; : ( ) [ ] # @ $ % * + = / \\ ~ ` ^ | _ -- ' \""
    ).split()
    generated = []
    for _ in range(300):
        n = rng.choice([1, 3, 8, 15, 40, 90])
        parts = [rng.choice(words) for _ in range(n)]
        seps = [rng.choice([" ", " ", " ", "  ", "\t", "\n", ""]) for _ in range(n)]
        text = "".join(p + s for p, s in zip(parts, seps, strict=True))
        generated.append(text.title() if rng.random() < 0.2 else text)
    return fixed + generated


def test_parity_with_transformers(tok, hf_tok):
    captions = _captions()
    ours = tok(captions)
    # transformers' tokenizer normalises with NFC + whitespace collapse + lower-case only (no ftfy, no
    # HTML unescaping), so it is given the text after our cleaning step: the comparison then covers
    # pre-tokenization, byte encoding, BPE merges, special tokens and the id table. Cleaning itself is
    # checked by hand in test_clean_text_hand_checked.
    mismatches = []
    for k, caption in enumerate(captions):
        hf_ids = hf_tok(clean_text(caption), add_special_tokens=False)["input_ids"]
        if ours[k].tolist() != _official_row(hf_ids) or tok.encode(caption) != hf_ids:
            mismatches.append(caption)
    assert not mismatches, f"{len(mismatches)} captions differ, e.g. {mismatches[:3]!r}"
    assert any(len(tok.encode(c)) > 75 for c in captions), "no caption exercises truncation"


def test_parity_on_raw_plain_text(tok, hf_tok):
    # For plain ASCII text without entities, cleaning is the same in both, so raw text must match too.
    for caption in ["A photo of a Dog.", "two  cats\ton a sofa, 3 pillows!", "It's 5 o'clock"]:
        assert tok.encode(caption) == hf_tok(caption, add_special_tokens=False)["input_ids"]


def reference_simple_tokenizer():
    """OpenAI's ``SimpleTokenizer`` from the ``openai-clip`` package, loaded from its file: the package's
    ``__init__`` imports torchvision, which this project does not install."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the openai-clip package (a dependency) is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    module_spec = importlib.util.spec_from_file_location("reference_simple_tokenizer", folder / "simple_tokenizer.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer(str(folder / "bpe_simple_vocab_16e6.txt.gz"))


def outside_captions() -> list[str]:
    from groupvit.data.synthetic import SceneGenerator

    generator = SceneGenerator(image_size=32, seed=3, split="train")
    synthetic = [generator.sample(i).caption for i in range(120)]
    hand = [
        "A Photo of a DOG.", "it's a dog's life, isn't it?", "I'd've gone... (maybe) -- 3.14 km/h @ 5pm #sunset",
        "café naïve résumé Ångström", "日本の猫 と 犬", "emoji 🐱🐶 party 🎉!!!", "Ｆｕｌｌ　ｗｉｄｔｈ ｔｅｘｔ",
        "fish &amp; chips", "fish &amp;amp; chips", "&lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot;", "cafÃ© mojibake",
        "“curly” ‘quotes’ — dashes – too", "tabs\tand\nnew\r\nlines   and    spaces", "", "   ", "<|endoftext|>",
        "<|startoftext|>hello", "x" * 300, "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "numbers 1234567890 0.5 1e-3 100% $20 €30", "under_score camelCase kebab-case snake_case",
        "word " * 100, "Ünïcödé ÀÉÎÕÜ ßẞ ﬁﬂ ligatures", "https://example.com/path?q=1&x=2",
    ]
    rng = random.Random(7)
    pool = ["red", "circle", "The", "of", "a", "photo", "Cat's", "grass,", "sky!", "(tree)", "42", "über", "naïve",
            "&amp;", "—", "🐕", "dog.", "'s", "n't", "x-ray", "C++", "e-mail", "U.S.A.", "well-being"]
    random_texts = [" ".join(rng.choice(pool) for _ in range(rng.randint(1, 30))) for _ in range(120)]
    return synthetic + hand + random_texts


def test_ids_equal_openai_simple_tokenizer_on_outside_captions(tok):
    reference = reference_simple_tokenizer()
    captions = outside_captions()
    assert len(captions) > 250
    for text in captions:
        assert tok.encode(text) == reference.encode(text), text
    # tokenize(): [SOT] ids [EOT], zero padding, truncated to 77 with EOT last (CLIP's tokenize with truncate).
    batch = tokenize(captions)
    for row, text in zip(batch.tolist(), captions, strict=True):
        ids = [SOT, *reference.encode(text), EOT]
        ids = ids[:76] + [EOT] if len(ids) > 77 else ids
        assert row == ids + [0] * (77 - len(ids)), text
