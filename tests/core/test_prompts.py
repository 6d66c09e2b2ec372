"""Prompt pieces cut from chat templates, and the per-word tokenization rule."""

from __future__ import annotations

from vllm_exposst.prompts import build_prompt, word_starts


def test_pieces_come_from_the_chat_template(tiny_llama):
    _, tokenizer, template = tiny_llama
    source = "a man walks in the park"
    messages = [
        {"role": "user", "content": f"Translate the following English text into German.\n{source}"}
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(template.offline_prompt(source)) == rendered
    assert tokenizer.decode(list(template.header_ids)) == "<|im_end|>\n<|im_start|>assistant\n"
    assert template.stop_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_system_prompt_goes_into_the_prefix(tiny_llama):
    _, tokenizer, _ = tiny_llama
    template = build_prompt(tokenizer, "German", "French", system_prompt="Be brief.")
    prefix = tokenizer.decode(list(template.prefix_ids))
    assert prefix.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert "German text into French" in prefix


def test_plain_fallback_without_chat_template(tiny_llama):
    _, tokenizer, _ = tiny_llama
    template_text, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        template = build_prompt(tokenizer, "English", "German")
    finally:
        tokenizer.chat_template = template_text
    assert tokenizer.decode(list(template.prefix_ids)).endswith("German.\nEnglish:\n")
    assert tokenizer.decode(list(template.header_ids)) == "\nGerman:\n"
    assert template.stop_id == tokenizer.eos_token_id


def test_word_tokens_rebuild_the_text_and_mark_word_starts(tiny_llama):
    _, tokenizer, template = tiny_llama
    text = "two dogs play with a red ball"
    words = template.words_ids(text)
    assert len(words) == 7
    assert tokenizer.decode([t for w in words for t in w]) == text
    for i, word in enumerate(words):
        assert template.word_start[word[0]] == (i > 0)
        assert not any(template.word_start[t] for t in word[1:])


def test_word_starts_cut_at_whitespace_tokens_and_at_the_word_cap():
    # ids 1 and 4 begin words; the table is written out by hand
    table = [False, True, False, False, True]
    assert word_starts([2, 3, 1, 2, 4], table, max_word_tokens=8) == [2, 4]
    assert word_starts([1, 2, 3], table, max_word_tokens=8) == []  # the first begins word 1
    assert word_starts([2, 2, 2, 2, 2], table, max_word_tokens=2) == [2, 4]
    # a fed lookahead (carried=1): the first generated token may begin the next word
    assert word_starts([1, 2], table, max_word_tokens=8, carried=1) == [0]
    assert word_starts([2, 2], table, max_word_tokens=2, carried=1) == [1]
    assert word_starts([], table, max_word_tokens=2) == []


def test_incremental_word_starts_equal_the_full_rescan_on_random_streams():
    """The scheduler's per-step scan (WordStarts) against word_starts over the whole
    prefix, after every piece of random token streams (random word caps and carries)."""
    import random

    from vllm_exposst.prompts import WordStarts

    rng = random.Random(22)
    for _ in range(300):
        vocab = rng.randint(2, 12)
        table = [rng.random() < 0.4 for _ in range(vocab)]
        cap, carried = rng.randint(1, 6), rng.randint(0, 5)
        stream = [
            rng.randrange(vocab + 2) for _ in range(rng.randint(0, 60))
        ]  # ids past the table too
        scan = WordStarts(table, cap, carried)
        seen = 0
        while seen < len(stream):
            seen = min(len(stream), seen + rng.randint(1, 4))
            expected = word_starts(stream[:seen], table, cap, carried)
            assert scan.extend(stream[:seen]) == expected
        assert scan.extend(stream) == word_starts(stream, table, cap, carried)
