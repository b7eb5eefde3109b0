"""The SentencePiece text tokenizer, trained here with a fixed layout of special tokens, `<wait>` among them.

SentencePiece layout (`SPECIAL_TOKENS`, the ids `flmjax.presets.tiny()` and `small()` use):

    0 <unk>   1 <s>   2 </s>   3 <wait>   4.. any extra specials, in order   then the learned pieces

There is no pad token: the released model has no text padding token (`<wait>` fills the text row). BOS, EOS,
`<wait>` and extras are SentencePiece *control* symbols, not user-defined symbols: a user-defined symbol is
matched in the input text (encoding "a <wait> b" would produce id 3), a control symbol never is, and it
decodes to the empty string. The ids are fixed by the trainer options and checked after every training run.
"""

from __future__ import annotations

import io
import os
import re
from typing import Iterable, Mapping

import sentencepiece as spm

from flmjax.data.tokenizer_base import WAIT_PIECE, SpecialIds, ids_in_range

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


class SentencePieceTokenizer(SpecialIds):
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
        return self._sp.decode(ids_in_range(ids, self.vocab_size))  # control symbols decode to ""

    def id_to_piece(self, id: int) -> str:
        return self._sp.id_to_piece(ids_in_range([id], self.vocab_size)[0])


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
