"""Common Chinese words are never names: jieba's dictionary as the Han-script side of the name whitelist.

The character tagger proposes a NAME wherever a run of Han characters looks like the names it was fitted to,
and in clinical Chinese many everyday words start with a common surname character: 谢谢 (谢), 常规 (常), 马上
(马). Philter's rule (``detector.whitelist_names``) keeps a word of a clinical/common whitelist from ever being
masked as a name, but its list is English. Here the whitelist is jieba's dictionary (0.42.1, about 350,000
words with corpus frequencies): a span proposed by the tagger or by a cue pattern (X大夫, 叫X) is dropped or cut
where common words of the dictionary (two characters or longer, frequency >= ``COMMON_WORD_FREQ``) show it is
not a name (``without_common_words``). Chinese full names are rare in that dictionary (the frequencies of 王建国
and 李强 are 12 and 159; 张伟, 王芳 and 陈静 are absent), so a patient's or clinician's name is kept; names from
the person's known identifiers never go through this rule. Medical terms missing from a general dictionary
(黄痰, yellow sputum) are not covered.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

COMMON_WORD_FREQ = 200
COMMON_NAME_WORD_FREQ = 1000  # a word jieba tags as a person name (nr*) counts as common only from here: 李娜 (438)
# stays a name, 谢谢 (1,089, also tagged nr) and 维生素 (1,933) do not
_WINDOW = 4  # characters of context either side of the span that the segmentation sees


@lru_cache(maxsize=1)
def _dictionary() -> tuple[Any, dict[str, str]]:
    import logging

    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.ERROR)
    jieba.dt.check_initialized()  # ~1 s once per process: the prefix dictionary
    return jieba.dt, jieba.posseg.dt.word_tag_tab


@lru_cache(maxsize=1)
def _compound_surnames() -> frozenset[str]:
    import yaml

    from medllm_pipelines.lib.deidentify.text.patterns import RECOGNISERS_PATH

    return frozenset(yaml.safe_load(RECOGNISERS_PATH.read_text(encoding="utf-8"))["zh_compound_surnames"])


def is_common(word: str) -> bool:
    """A common word of the dictionary that does not start with a compound surname (欧阳 and 诸葛亮 are frequent,
    and names)."""
    if word[:2] in _compound_surnames():
        return False
    tokenizer, tags = _dictionary()
    threshold = COMMON_NAME_WORD_FREQ if tags.get(word, "").startswith("nr") else COMMON_WORD_FREQ
    return len(word) >= 2 and tokenizer.FREQ.get(word, 0) >= threshold


def is_han(value: str) -> bool:
    return bool(value) and all("\u3400" <= ch <= "\u9fff" for ch in value)


def without_common_words(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``text[start:end]`` (a proposed Han name) without the common words it runs into, or None when it is not a name.

    jieba's segmentation without its HMM leaves an unknown name as single characters, so a multi-character token
    is always a dictionary word. A span is dropped when it starts inside a word (常规 of 血常规), when a common
    word starting at its first character runs past its end (谢谢 of 谢谢大夫: thanks, not Dr Xie), or when it is
    tiled by words alone, one of them common (谢谢; 头痛好转, "headache better"); it is cut before a common word
    that starts inside it and runs past its end (张伟建 of 张伟建议 becomes 张伟: 建议 is "suggest"), and dropped
    when fewer than 2 characters remain. A common word inside the span is a given name (艳丽 of 黄艳丽, 诗文 of
    胡诗文) and is kept: Chinese given names are often words.
    """
    tokenizer, _ = _dictionary()
    low, high = max(0, start - _WINDOW), min(len(text), end + _WINDOW)
    tokens: list[tuple[int, int, str]] = []
    at = low
    for word in tokenizer.cut(text[low:high], HMM=False):
        word_start, at = at, at + len(word)
        if at > start and word_start < end:
            tokens.append((word_start, at, word))
    cut = end
    for word_start, word_end, word in tokens:
        if len(word) < 2:
            continue
        if word_start < start:
            return None
        if word_end > end and is_common(word):
            if word_start == start:
                return None
            cut = min(cut, word_start)
    inside = [(s, e, w) for s, e, w in tokens if e <= cut]
    if inside and all(len(w) >= 2 for _, _, w in inside) and inside[-1][1] == cut and any(is_common(w) for _, _, w in inside):
        return None
    if cut == end:
        return start, end  # a one-character surname before a title (王医生) is left as proposed
    return (start, cut) if cut - start >= 2 else None


def dictionary_version() -> str:
    import jieba

    return f"jieba {jieba.__version__} dict.txt, frequency >= {COMMON_WORD_FREQ} ({COMMON_NAME_WORD_FREQ} if tagged nr)"
