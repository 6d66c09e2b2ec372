"""Text passed on token by token never shows half a character.

Byte-level BPE splits ü, ß, emoji and CJK across tokens; decoding a prefix that ends
inside a character gives U+FFFD.  The reference is the decode of all tokens at once.
"""

from __future__ import annotations

import pytest

from vllm_exposst import models
from vllm_exposst.prompts import build_prompt, finished_text

TEXTS = [
    "Grüße aus Köln: die Straße, das Mädchen, Öl und Übermut.",
    "Wir feiern 🎉😀 heute – mit Freude!",
    "你好，世界。今天天气很好。",
    "Ελληνικά και русский текст",
]


def assert_prefixes_never_show_half_a_character(template, text: str) -> int:
    """Every prefix's finished text is a prefix of the whole and holds no U+FFFD;
    returns how many prefixes ended inside a character (the case under test)."""
    ids = template.tokenizer.encode(text, add_special_tokens=False)
    whole = template.decode(ids)
    assert "\ufffd" not in whole
    inside = 0
    for end in range(1, len(ids) + 1):
        raw = template.decode(ids[:end])
        inside += raw.endswith("\ufffd")
        shown = finished_text(raw)
        assert whole.startswith(shown), (text, end, shown)
        assert "\ufffd" not in shown
    assert finished_text(whole) == whole
    return inside


def test_the_tiny_tokenizer_splits_characters_and_no_prefix_shows_half_of_one(tiny_llama):
    _, tokenizer, template = tiny_llama
    inside = sum(assert_prefixes_never_show_half_a_character(template, t) for t in TEXTS)
    assert inside >= len(TEXTS)  # the tokenizer does split them


@pytest.mark.realmodel
def test_smollm2_splits_characters_and_no_prefix_shows_half_of_one():
    model_path = models.default_model()
    from transformers import AutoTokenizer

    template = build_prompt(AutoTokenizer.from_pretrained(model_path))
    inside = sum(assert_prefixes_never_show_half_a_character(template, t) for t in TEXTS)
    assert inside >= len(TEXTS) - 1  # emoji and CJK at least: SmolLM2 has ü and ß whole


def test_a_written_replacement_character_is_kept_once_text_follows():
    assert finished_text("a \ufffd b") == "a \ufffd b"
    assert finished_text("ab\ufffd\ufffd") == "ab"
