"""Tokenizing text that may be far too long: what cannot fit the context is refused before it is tokenized.

Tokenizing a 5 MB prompt takes about a gigabyte, which the allocator then keeps, to learn that 2 million tokens
do not fit a 512-token context. No token stands for more bytes than the longest piece of the vocabulary, so
a text of ``n`` bytes takes at least ``n / longest`` tokens: where that alone is more than the context, the
text cannot fit, and is refused (or, where the caller truncates, cut) without being tokenized whole.
"""

from __future__ import annotations

import weakref
from typing import Any

from hllama.errors import PromptTooLong

#: Texts shorter than this are tokenized as they are: they cost nothing worth avoiding.
_WORTH_BOUNDING = 4096

#: The longest piece (in UTF-8 bytes) of each tokenizer seen, found once (a pass over its vocabulary).
_LONGEST: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def fewest_tokens(tokenizer: Any, text: str) -> int:
    """At least how many tokens ``text`` takes, found without tokenizing it (0: no bound is known, or the text is
    too short for one to matter)."""
    if len(text) < _WORTH_BOUNDING:
        return 0
    longest = _longest_piece(tokenizer)
    return -(-len(text.encode("utf-8", "surrogatepass")) // longest) if longest else 0


def token_ids(tokenizer: Any, text: str, *, context: int | None, add_special_tokens: bool = False) -> list[int]:
    """``text``'s tokens, or :class:`PromptTooLong` where even the fewest it could take are more than ``context``."""
    if context and (least := fewest_tokens(tokenizer, text)) > context:
        raise PromptTooLong(least, context, at_least=True)
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def within(tokenizer: Any, text: str, context: int) -> str:
    """``text`` cut where its first ``context`` tokens surely end (twice the bytes they can take, so that the
    last word the cut goes through cannot change them); the text itself where that is all of it."""
    longest = _longest_piece(tokenizer) if len(text) >= _WORTH_BOUNDING else 0
    keep = 2 * (context + 1) * longest
    return text[:keep] if longest and len(text) > keep else text


def _longest_piece(tokenizer: Any) -> int:
    """The most bytes of text one token of ``tokenizer`` stands for, at most; 0 for a WordPiece tokenizer, whose
    unknown token stands for a whole word of any length. A byte-level piece is counted by its bytes as spelled in
    the vocabulary (two for most bytes), never fewer than those it stands for; a tokenizer that normalizes text
    first is given four times that, as normalizing may shorten it."""
    try:
        return _LONGEST[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "WordPiece":
        longest = 0
    else:
        longest = max((len(piece.encode("utf-8", "surrogatepass")) for piece in tokenizer.get_vocab()), default=0)
        if backend is None or backend.normalizer is not None:  # NFKC may make 3 bytes one ("Ａ" to "A"): room for it
            longest *= 4
    try:
        _LONGEST[tokenizer] = longest
    except TypeError:  # a tokenizer that cannot be weakly referenced: found again next time
        pass
    return longest
