"""Sentence ends in a word stream (vllm_exposst.segmentation) on real punctuation."""

from __future__ import annotations

import pytest

from vllm_exposst.segmentation import (
    COMMIT,
    MAX_WORDS,
    PAUSE,
    PUNCTUATION,
    SentenceEnd,
    SentenceSplitter,
    segment,
)


def sentences(text: str, language: str = "English", max_words: int | None = None) -> list[str]:
    return [s.text for s in segment(text, language, max_words)]


# each case: the expected sentences joined by ' | ' (the text is them joined by ' ')
ENGLISH = [
    "It rained. | We stayed home.",
    "Really?! | Yes. | Why not!",
    'He said "Stop." | Then he left.',
    "He said 'Stop.' | Then he left.",
    "It works (mostly.) | The rest fails.",
    '"Are you sure?" she asked. | I was.',
    "Wait... what happened? | Nothing.",
    "Wait... | Then it broke.",
    "Wait… | Then it broke.",
    "The rate rose to 3.5 percent. | Nobody cared.",
    "It cost 3.50. | Cheap.",
    "We met in 2024. | It was fun.",
    "Dr. Smith met Mr. Jones and Prof. Lee. | They talked.",
    "J. R. R. Tolkien wrote it. | Fine.",
    "The U.S. Army came, e.g. at night. | Good.",
    "apples, pears etc. and more. | Done.",
    "apples, pears etc. | We left.",
    "Room No. 5 is free. | Take it.",
    "it ended. | then it began again",
]

GERMAN = [
    "Er sagte: „Halt.“ | Dann ging er.",
    "Er sagte: »Halt.« | Dann ging er.",
    "Das ist z.B. ein Test. | Ende.",
    "Das ist z. B. ein Test. | Ende.",
    "Dr. Müller kam am 3. Oktober. | Er blieb.",
    "Der Preis stieg um 3,5 Prozent. | Gut so.",
    "Wir kauften Äpfel usw. und gingen. | Dann aßen wir.",
    "Es kostet ca. hundert Euro bzw. mehr. | Teuer!",
    "Im Jahr 2024. | Danach nicht mehr.",
    "Kommst du? | Ja. | Sicher…",
    "Er kam (spät.) | Sie nicht.",
    "Er kam [sic]. | Sie nicht.",
]


@pytest.mark.parametrize("case", ENGLISH)
def test_english_sentences(case):
    expected = case.split(" | ")
    assert sentences(" ".join(expected), "English") == expected


@pytest.mark.parametrize("case", GERMAN)
def test_german_sentences(case):
    expected = case.split(" | ")
    assert sentences(" ".join(expected), "German") == expected


def test_language_names_and_codes_choose_the_rules():
    assert sentences("am 3. Oktober. Gut.", "de") == ["am 3. Oktober.", "Gut."]
    assert sentences("I counted to 3. Then I stopped.", "en") == [
        "I counted to 3.",
        "Then I stopped.",
    ]
    # an unknown language gets both lists (German ordinals included)
    assert sentences("Dr. Li kam am 3. Mai z.B. mit Mr. Wu. Ok.", "Klingon") == [
        "Dr. Li kam am 3. Mai z.B. mit Mr. Wu.",
        "Ok.",
    ]


def test_text_without_punctuation_is_cut_only_at_the_word_cap():
    words = [f"w{i}" for i in range(23)]
    cut = segment(" ".join(words), max_words=10)
    assert [len(s.words) for s in cut] == [10, 10, 3]
    assert [s.end for s in cut] == [MAX_WORDS, MAX_WORDS, COMMIT]
    assert [w for s in cut for w in s.words] == words
    assert [s.end for s in segment(" ".join(words))] == [COMMIT]


def test_cap_and_punctuation_on_the_same_word_count_as_punctuation():
    assert [(s.text, s.end) for s in segment("we are home. so we eat now", max_words=3)] == [
        ("we are home.", PUNCTUATION),
        ("so we eat", MAX_WORDS),
        ("now", COMMIT),
    ]


def test_stream_order_end_before_the_word_that_decided_it():
    splitter = SentenceSplitter("English")
    assert splitter.push("Hello.") == ["Hello.", SentenceEnd(PUNCTUATION)]
    assert splitter.push('"Stop."') == ['"Stop."']  # closing quote: depends on the next word
    assert splitter.push("Then") == [SentenceEnd(PUNCTUATION), "Then"]
    assert splitter.push("etc.") == ["etc."]
    assert splitter.push("and") == ["and"]
    assert splitter.flush(PAUSE) == [SentenceEnd(PAUSE)]
    assert splitter.flush(PAUSE) == []  # nothing in progress
    assert splitter.push("Wait...") == ["Wait..."]
    assert splitter.flush(PAUSE) == [SentenceEnd(PUNCTUATION)]  # the stop was there


def test_words_with_whitespace_are_refused():
    with pytest.raises(ValueError):
        SentenceSplitter().push("two words")
    with pytest.raises(ValueError):
        SentenceSplitter().push("")


def test_a_long_talk_keeps_every_word_in_order():
    text = " ".join(
        ["Dr. Smith arrived at 3.5 p.m. yesterday.", "„Halt“, sagte er.", "no stop here"] * 200
    )
    cut = segment(text, "English", max_words=30)
    assert [w for s in cut for w in s.words] == text.split()
    assert all(len(s.words) <= 30 for s in cut)
