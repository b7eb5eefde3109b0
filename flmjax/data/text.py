"""Text tokenizers for the text row: SentencePiece (trained here) and, optionally, the released Qwen vocabulary.

Every tokenizer offers the same small interface (`Tokenizer`): `encode(text) -> ids` (no BOS/EOS added),
`decode(ids) -> text`, `vocab_size`, `wait_id`, `id_to_piece(id)` and `special_ids`. The text row holds
monologue tokens and `<wait>` everywhere else, so two rules hold for both backends:

- `encode` never yields `wait_id`, whatever the text: a transcript containing the literal string "<wait>" is
  tokenized as ordinary characters. Only the monologue alignment puts `<wait>` in the text row.
- `decode` drops `<wait>` and the other special tokens and returns the text; an id outside
  `[0, vocab_size)` is an `IndexError`.

SentencePiece layout (`SPECIAL_TOKENS`, the ids `flmjax.presets.tiny()` and `small()` use):

    0 <unk>   1 <s>   2 </s>   3 <wait>   4.. any extra specials, in order   then the learned pieces

There is no pad token: the released model has no text padding token (`<wait>` fills the text row). BOS, EOS,
`<wait>` and extras are SentencePiece *control* symbols, not user-defined symbols: a user-defined symbol is
matched in the input text (encoding "a <wait> b" would produce id 3), a control symbol never is, and it
decodes to the empty string. The ids are fixed by the trainer options and checked after every training run.

Hugging Face backend (`HFTokenizer`, needs `pip install 'flmjax[hf]'`): reads a `tokenizer.json`, e.g. the
released checkpoint's Qwen2.5 BPE (151665 ids) with FLM-Audio's 3 added tokens (151668 in all). The `<wait>`
id comes from the checkpoint's `config.json` (`mm_token_info.text_wait_token_id`), never from its spelling.

`check_compatible(tokenizer, model_config)` requires `tokenizer.vocab_size <= config.vocab_size` (a model's
text vocabulary may be padded beyond the tokenizer, e.g. to a multiple of 128 for sharding; the released model
is the equal case, 151668 = 151665 + 3) and `tokenizer.wait_id == config.text_wait_id`.
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import Iterable, Mapping, Protocol, runtime_checkable

import sentencepiece as spm

from flmjax.config import ConfigError, ModelConfig

WAIT_PIECE = "<wait>"
# The fixed SentencePiece layout: piece -> id. No pad token (pad_id = -1).
SPECIAL_TOKENS: Mapping[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2, WAIT_PIECE: 3}
# Trainer options that define the layout above; `train_sentencepiece` does not let callers override them.
_LAYOUT_OPTIONS = (
    "unk_id",
    "bos_id",
    "eos_id",
    "pad_id",
    "unk_piece",
    "bos_piece",
    "eos_piece",
    "pad_piece",
    "control_symbols",
    "user_defined_symbols",
)
MODEL_TYPES = ("unigram", "bpe")
HF_INSTALL_HINT = "pip install 'flmjax[hf]'"


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a text tokenizer."""

    @property
    def vocab_size(self) -> int:
        """One past the largest id the tokenizer can produce or reserves (`<wait>` included)."""

    @property
    def wait_id(self) -> int:
        """The id of `<wait>`, the text row's filler."""

    @property
    def special_ids(self) -> dict[str, int]:
        """Special piece -> id (`<wait>` among them)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS/EOS added; never contains `wait_id`."""

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`, with `<wait>` and other specials dropped."""

    def id_to_piece(self, id: int) -> str:
        """The vocabulary entry of one id."""


class TokenizerMismatchError(ConfigError):
    """A tokenizer that does not fit a model config; the message names every problem."""


def _ids_in_range(ids: Iterable[int], vocab_size: int) -> list[int]:
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise IndexError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


# ---------------------------------------------------------------------- SentencePiece
class _SpecialIds:
    """`wait_id` and `special_ids` of a backend that sets `_wait_id` and `_special_ids`."""

    _wait_id: int
    _special_ids: dict[str, int]

    @property
    def wait_id(self) -> int:
        return self._wait_id

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self._special_ids)


class SentencePieceTokenizer(_SpecialIds):
    """A SentencePiece model (a `.model` file's path, or its serialized bytes) with `<wait>` as a control symbol.

    Picklable (for Grain worker processes): it pickles as the model bytes.
    """

    def __init__(self, model_path_or_bytes: str | os.PathLike | bytes):
        if isinstance(model_path_or_bytes, (bytes, bytearray)):
            model_bytes, source = bytes(model_path_or_bytes), "SentencePiece model bytes"
        else:
            source = os.fspath(model_path_or_bytes)
            with open(source, "rb") as f:
                model_bytes = f.read()
        self._load(model_bytes, source)

    def _load(self, model_bytes: bytes, source: str) -> None:
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except RuntimeError as e:
            raise ValueError(f"{source} is not a SentencePiece model ({e})") from e
        self._model_bytes = model_bytes
        wait_id = self._sp.piece_to_id(WAIT_PIECE)
        if self._sp.id_to_piece(wait_id) != WAIT_PIECE:
            raise ValueError(
                f"{source} has no {WAIT_PIECE} piece; train the tokenizer with "
                "`python -m launch.train_tokenizer`, which reserves it"
            )
        if not self._sp.is_control(wait_id):
            raise ValueError(
                f"{source}: {WAIT_PIECE} (id {wait_id}) is not a control symbol, so text containing "
                f"the literal string {WAIT_PIECE!r} would encode to it; retrain with "
                "`python -m launch.train_tokenizer`, which makes it a control symbol"
            )
        self._wait_id = wait_id
        self._special_ids = {
            self._sp.id_to_piece(i): i
            for i in range(self._sp.get_piece_size())
            if self._sp.is_control(i) or self._sp.is_unknown(i)
        }

    def __getstate__(self):
        return {"model_bytes": self._model_bytes}

    def __setstate__(self, state):
        self._load(state["model_bytes"], "pickled SentencePiece model")

    @property
    def model_bytes(self) -> bytes:
        """The serialized model (what a `.model` file holds)."""
        return self._model_bytes

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode(_ids_in_range(ids, self.vocab_size))  # control symbols decode to ""

    def id_to_piece(self, id: int) -> str:
        return self._sp.id_to_piece(_ids_in_range([id], self.vocab_size)[0])


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "unigram",
    *,
    extra_specials: Iterable[str] = (),
    character_coverage: float = 0.9995,
    byte_fallback: bool = False,
    hard_vocab_limit: bool = True,
    num_threads: int = 1,
    **trainer_options,
) -> bytes:
    """Trains a SentencePiece model in memory on `texts` (one sentence each) and returns its serialized bytes.

    The specials sit at `SPECIAL_TOKENS`' ids, then `extra_specials` (control symbols) at 4, 5, ... With one
    thread (the default), training on the same texts twice gives byte-identical models; more threads are
    faster on big corpora but give a different model, and no reproducibility is promised for them.
    `vocab_size` counts every piece, specials included. With `hard_vocab_limit` (the default) a corpus too
    small for `vocab_size` is a `ValueError` naming the largest size it supports; with
    `hard_vocab_limit=False` the vocabulary may come out smaller. `trainer_options` go to SentencePiece as they
    are (e.g. `normalization_rule_name`, `split_digits`), except those that would move the specials.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {MODEL_TYPES}")
    extra_specials = list(extra_specials)
    reserved = [key for key in trainer_options if key in _LAYOUT_OPTIONS]
    if reserved:
        raise ValueError(
            f"train_sentencepiece fixes the special-token layout; do not pass {reserved} "
            "(use extra_specials for more control symbols)"
        )
    clashes = [s for s in extra_specials if s in SPECIAL_TOKENS]
    if clashes or len(set(extra_specials)) != len(extra_specials):
        raise ValueError(f"extra_specials {extra_specials} repeat a special or each other")
    control_symbols = [WAIT_PIECE] + extra_specials
    num_specials = len(SPECIAL_TOKENS) + len(extra_specials)
    if vocab_size <= num_specials:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for learned pieces after the {num_specials} specials")
    num_sentences = 0

    def sentences():
        nonlocal num_sentences
        for text in texts:
            if text and not text.isspace():
                num_sentences += 1
                yield text

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            control_symbols=control_symbols,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            hard_vocab_limit=hard_vocab_limit,
            num_threads=num_threads,
            minloglevel=2,
            **trainer_options,
        )
    except RuntimeError as e:
        if num_sentences == 0:
            raise ValueError("no text to train a SentencePiece model on (every sentence was empty)") from e
        too_high = re.search(r"Vocabulary size too high .*<= (\d+)", str(e))
        if too_high:
            raise ValueError(
                f"vocab_size {vocab_size} is too large for this corpus ({num_sentences} sentences): "
                f"SentencePiece can build at most {too_high.group(1)} pieces from it, specials included. Use a "
                "smaller vocab_size, more text, or hard_vocab_limit=False (--soft_vocab_limit) to accept a "
                "smaller vocabulary"
            ) from e
        raise
    model_bytes = model.getvalue()
    tokenizer = SentencePieceTokenizer(model_bytes)
    expected = {**SPECIAL_TOKENS, **{s: len(SPECIAL_TOKENS) + i for i, s in enumerate(extra_specials)}}
    got = {piece: tokenizer._sp.piece_to_id(piece) for piece in expected}
    if got != expected:  # a guard against a SentencePiece version that lays pieces out differently
        raise RuntimeError(f"SentencePiece placed the specials at {got}, expected {expected}")
    return model_bytes


# ---------------------------------------------------------------------- Hugging Face tokenizers
def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(
            "the Hugging Face tokenizer backend (tokenizer.json, e.g. the released Qwen "
            f"vocabulary) needs the `tokenizers` package: {HF_INSTALL_HINT}"
        ) from e
    return tokenizers


class HFTokenizer(_SpecialIds):
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
        ids = [i for i in _ids_in_range(ids, self.vocab_size) if i != self._wait_id]
        return self._tok.decode(ids, skip_special_tokens=True)

    def id_to_piece(self, id: int) -> str:
        id = _ids_in_range([id], self.vocab_size)[0]
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


# ---------------------------------------------------------------------- loading and checks
def load_tokenizer(path: str | os.PathLike, wait_id: int | None = None) -> Tokenizer:
    """A tokenizer from a file or folder, by its kind:

    - `*.model`: SentencePiece (its `<wait>` is its own; `wait_id`, if given, must agree);
    - `*.json` (a `tokenizer.json`): Hugging Face, `<wait>` from `wait_id` or the `config.json` beside it;
    - a folder holding `tokenizer.json` (a released checkpoint): as above; else one holding `tokenizer.model`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            return HFTokenizer.from_checkpoint(path, wait_id)
        if os.path.isfile(os.path.join(path, "tokenizer.model")):
            return load_tokenizer(os.path.join(path, "tokenizer.model"), wait_id)
        raise FileNotFoundError(f"{path} holds neither tokenizer.json nor tokenizer.model")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer at {path}")
    if path.endswith(".model"):
        tokenizer = SentencePieceTokenizer(path)
        if wait_id is not None and wait_id != tokenizer.wait_id:
            raise ValueError(f"{path} has {WAIT_PIECE} at id {tokenizer.wait_id}, not the requested {wait_id}")
        return tokenizer
    if path.endswith(".json"):
        if wait_id is None:
            wait_id = read_wait_id(os.path.join(os.path.dirname(path), "config.json"))
        return HFTokenizer(path, wait_id)
    raise ValueError(
        f"{path}: unknown tokenizer kind; expected a SentencePiece .model, a tokenizer.json, or a folder holding one"
    )


def check_compatible(tokenizer: Tokenizer, model_config: ModelConfig) -> None:
    """Raises `TokenizerMismatchError` (a `ConfigError`) unless the model can embed every id of the tokenizer
    (`tokenizer.vocab_size <= vocab_size`; a larger, padded model vocabulary is fine) and both agree on `<wait>`.
    """
    problems = []
    if tokenizer.vocab_size > model_config.vocab_size:
        problems.append(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's text vocabulary "
            f"(vocab_size) has only {model_config.vocab_size}"
        )
    if tokenizer.wait_id != model_config.text_wait_id:
        problems.append(
            f"the tokenizer's <wait> id is {tokenizer.wait_id} but the model config's "
            f"text_wait_token_id is {model_config.text_wait_id}"
        )
    if problems:
        raise TokenizerMismatchError("tokenizer does not fit the model config:\n  " + "\n  ".join(problems))
