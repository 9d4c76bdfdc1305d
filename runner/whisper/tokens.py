"""Whisper's tokenizer as ESPnet 202511 calls it, over the tiktoken encoding openai-whisper ships today.

ESPnet's `OpenAIWhisperTokenizer`, `OpenAIWhisperTokenIDConverter` and `whisper_export_vocabulary` call
`whisper.tokenizer.get_tokenizer(...).tokenizer`, the Hugging Face GPT-2 tokenizer openai-whisper wrapped until
20230314 (`tokenize`, `convert_ids_to_tokens`, `add_special_tokens`, ...). Releases since wrap a tiktoken
`Encoding` and have no such attribute, so an experiment with `token_type: whisper_multilingual` could not decode.
`GPT2View` gives the encoding that surface: the same ids, and tokens spelled as GPT-2 spells them (bytes mapped to
printable characters, "Ġ" for a space), so token lists written by ESPnet's recipes line up id for id.
`bridged()` makes `get_tokenizer` return such tokenizers inside the block only.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any


def _byte_characters() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (`bytes_to_unicode` of its encoder.py)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in characters:
            characters[byte] = chr(256 + shifted)
            shifted += 1
    return characters


BYTE_CHARACTERS = _byte_characters()
CHARACTER_BYTES = {character: byte for byte, character in BYTE_CHARACTERS.items()}


class GPT2View:
    """The part of Hugging Face's GPT-2 tokenizer that ESPnet calls, over a tiktoken `Encoding`.

    Ids are the encoding's; the special tokens (`<|endoftext|>`, languages, tasks, timestamps) are "added"
    tokens as they were for Hugging Face, and tokens added later take the next free ids.
    """

    def __init__(self, encoding: Any, multilingual: bool = True) -> None:
        self.encoding = encoding
        specials = {name: encoding.encode_single_token(name) for name in encoding.special_tokens_set}
        first_special = min(specials.values())
        self._tokens = [self._spelled(encoding.decode_single_token_bytes(i)) for i in range(first_special)]
        # GPT-2's own vocabulary counted <|endoftext|>; Whisper's multilingual one added it
        self.vocab_size = first_special + (0 if multilingual else 1)
        self._added = {name: index for name, index in specials.items()}
        self._special = set(specials)
        self._by_id = {index: name for name, index in self._added.items()}

    @staticmethod
    def _spelled(data: bytes) -> str:
        return "".join(BYTE_CHARACTERS[byte] for byte in data)

    def copy(self) -> GPT2View:
        """An independent copy (its own added tokens) sharing the immutable encoding."""
        clone = copy.copy(self)
        clone._added, clone._special, clone._by_id = dict(self._added), set(self._special), dict(self._by_id)
        return clone

    @property
    def additional_special_tokens(self) -> list[str]:
        return sorted(self._special, key=self._added.__getitem__)

    def get_added_vocab(self) -> dict[str, int]:
        return {name: index for name, index in self._added.items() if index >= self.vocab_size}

    def _add(self, tokens: Iterable[str], special: bool) -> int:
        added = 0
        for token in tokens:
            if token in self._added or token in self._tokens_index():
                continue
            index = max(len(self._tokens) - 1, *self._by_id) + 1
            self._added[token], self._by_id[index] = index, token
            if special:
                self._special.add(token)
            added += 1
        return added

    def _tokens_index(self) -> dict[str, int]:
        if not hasattr(self, "_index"):
            self._index = {token: index for index, token in enumerate(self._tokens)}
        return self._index

    def add_special_tokens(self, tokens: dict[str, list[str]]) -> int:
        return self._add(tokens.get("additional_special_tokens", []), special=True)

    def add_tokens(self, tokens: Iterable[str]) -> int:
        return self._add(tokens, special=False)

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        ids = self.encoding.encode(text, allowed_special=self.encoding.special_tokens_set)
        return self.convert_ids_to_tokens(ids)

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> Any:
        if isinstance(ids, int):
            return self._token(ids)
        return [self._token(int(i)) for i in ids if not (skip_special_tokens and self._by_id.get(int(i)) in self._special)]

    def _token(self, index: int) -> str:
        return self._tokens[index] if index < len(self._tokens) else self._by_id[index]

    def convert_tokens_to_ids(self, tokens: Any) -> Any:
        if isinstance(tokens, str):
            return self._added.get(tokens, self._tokens_index().get(tokens))
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_tokens_to_string(self, tokens: Iterable[str]) -> str:
        data = bytearray()
        for token in tokens:
            if token in self._added:
                data += token.encode("utf-8")
            else:
                data += bytes(CHARACTER_BYTES[character] for character in token)
        return data.decode("utf-8", errors="replace")


class BridgedTokenizer:
    """openai-whisper's `Tokenizer` with the `.tokenizer` attribute ESPnet expects (a `GPT2View`); everything
    else (`sot_sequence_including_notimestamps`, `decode`, ...) is the original's."""

    def __init__(self, original: Any, multilingual: bool) -> None:
        self._original = original
        self.tokenizer = GPT2View(original.encoding, multilingual)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_original":  # copy and pickle probe the bare instance
            raise AttributeError(name)
        return getattr(self._original, name)

    def __deepcopy__(self, memo: dict[int, Any]) -> BridgedTokenizer:
        # ESPnet deep-copies its tokenizer; tiktoken's encoding is immutable and shared
        clone = BridgedTokenizer.__new__(BridgedTokenizer)
        clone._original, clone.tokenizer = self._original, self.tokenizer.copy()
        return clone


def needs_bridge(whisper: Any) -> bool:
    """Whether the installed openai-whisper's tokenizer lacks the Hugging Face one ESPnet calls."""
    return hasattr(whisper.tokenizer.Tokenizer, "__dataclass_fields__") and \
        "encoding" in whisper.tokenizer.Tokenizer.__dataclass_fields__


@contextlib.contextmanager
def bridged(whisper: Any) -> Iterator[None]:
    """Inside the block, `whisper.tokenizer.get_tokenizer` returns `BridgedTokenizer`s (where openai-whisper
    needs it); restored on leaving. Tokenizers made inside keep working after."""
    if not needs_bridge(whisper):
        yield
        return
    module = whisper.tokenizer
    original = module.get_tokenizer

    def get_tokenizer(multilingual: bool, **kwargs: Any) -> BridgedTokenizer:
        return BridgedTokenizer(original(multilingual, **kwargs), multilingual)

    module.get_tokenizer = get_tokenizer
    try:
        yield
    finally:
        module.get_tokenizer = original


def token_list(whisper: Any, multilingual: bool = True) -> list[str]:
    """The token list ESPnet's `whisper_export_vocabulary` writes for Whisper: every id in order, "Ġ" as a space
    (51865 tokens; 51864 for English-only models)."""
    encoding = whisper.tokenizer.get_encoding("multilingual" if multilingual else "gpt2")
    view = GPT2View(encoding, multilingual)
    return [view.convert_ids_to_tokens(i).replace("Ġ", " ") for i in range(encoding.n_vocab)]
