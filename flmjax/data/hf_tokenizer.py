"""The Hugging Face text tokenizer backend: a `tokenizer.json` (e.g. the released Qwen vocabulary) with `<wait>`.

`HFTokenizer` (needs `pip install 'flmjax[hf]'`) reads a `tokenizer.json`, e.g. the
released checkpoint's Qwen2.5 BPE (151665 ids) with FLM-Audio's 3 added tokens (151668 in all). The `<wait>`
id comes from the checkpoint's `config.json` (`mm_token_info.text_wait_token_id`), never from its spelling.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from flmjax.data.tokenizer_base import WAIT_PIECE, SpecialIds, ids_in_range

HF_INSTALL_HINT = "pip install 'flmjax[hf]'"


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(
            "the Hugging Face tokenizer backend (tokenizer.json, e.g. the released Qwen "
            f"vocabulary) needs the `tokenizers` package: {HF_INSTALL_HINT}"
        ) from e
    return tokenizers


class HFTokenizer(SpecialIds):
    """A Hugging Face `tokenizer.json` (e.g. the released checkpoint's Qwen2.5 vocabulary) with a given `<wait>` id.

    `wait_id` must name an added token of the file (its spelling does not matter), or lie beyond the file's
    ids: a plain Qwen `tokenizer.json` lacking FLM-Audio's added tokens then gets the id reserved, and
    `vocab_size` grows to `wait_id + 1`. The wait token is made special and special tokens are never matched in
    input text, so encoding text cannot produce them. Picklable (as the JSON text and `wait_id`).
    """

    def __init__(self, tokenizer_json_path: str | os.PathLike, wait_id: int):
        source = os.fspath(tokenizer_json_path)
        with open(source, encoding="utf-8") as f:
            self._build(f.read(), int(wait_id), source)

    @classmethod
    def from_checkpoint(cls, folder: str | os.PathLike, wait_id: int | None = None) -> HFTokenizer:
        """`folder/tokenizer.json` with the `<wait>` id of `folder/config.json` (unless `wait_id` is given)."""
        folder = os.fspath(folder)
        tokenizer_path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(tokenizer_path):
            raise FileNotFoundError(f"{folder} has no tokenizer.json")
        if wait_id is None:
            wait_id = read_wait_id(os.path.join(folder, "config.json"))
        return cls(tokenizer_path, wait_id)

    def _build(self, json_text: str, wait_id: int, source: str) -> None:
        tokenizers = _import_tokenizers()
        try:
            tok = tokenizers.Tokenizer.from_str(json_text)
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise ValueError(f"{source} is not a Hugging Face tokenizer.json ({e})") from e
        added = tok.get_added_tokens_decoder()  # id -> AddedToken
        size = max([tok.get_vocab_size(with_added_tokens=True)] + [i + 1 for i in added])
        if wait_id < 0:
            raise ValueError(f"wait id {wait_id} is negative")
        if wait_id < size:
            if wait_id not in added:
                raise ValueError(
                    f"{source}: wait id {wait_id} is the ordinary token {tok.id_to_token(wait_id)!r}, "
                    "not an added token; is text_wait_token_id from this checkpoint?"
                )
            self._wait_piece = added[wait_id].content
            if not added[wait_id].special:
                tok.add_special_tokens([tokenizers.AddedToken(self._wait_piece, special=True)])
                if tok.token_to_id(self._wait_piece) != wait_id:
                    raise RuntimeError(f"{source}: making {self._wait_piece!r} special moved it off id {wait_id}")
        else:  # reserved beyond the file's ids
            self._wait_piece = WAIT_PIECE
            size = wait_id + 1
        tok.encode_special_tokens = True  # special tokens in input text are plain characters
        self._tok, self._json, self._source = tok, json_text, source
        self._wait_id, self._vocab_size = wait_id, size
        self._special_ids = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        self._special_ids[self._wait_piece] = wait_id

    def __getstate__(self):
        return {"json": self._json, "wait_id": self._wait_id, "source": self._source}

    def __setstate__(self, state):
        self._build(state["json"], state["wait_id"], state["source"])

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [i for i in ids_in_range(ids, self.vocab_size) if i != self._wait_id]
        return self._tok.decode(ids, skip_special_tokens=True)

    def id_to_piece(self, id: int) -> str:
        id = ids_in_range([id], self.vocab_size)[0]
        if id == self._wait_id:
            return self._wait_piece
        piece = self._tok.id_to_token(id)
        if piece is None:
            raise IndexError(f"token id {id} is not in {self._source}")
        return piece


def read_wait_id(config_json_path: str | os.PathLike) -> int:
    """`mm_token_info.text_wait_token_id` of a released `config.json`."""
    path = os.fspath(config_json_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: it gives the <wait> id (mm_token_info.text_wait_token_id); pass wait_id= instead"
        )
    with open(path) as f:
        official = json.load(f)
    try:
        return int(official["mm_token_info"]["text_wait_token_id"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} has no mm_token_info.text_wait_token_id; pass wait_id= instead") from e
