"""Text tokenizers for the text row: their common interface, loading one by its file's kind, and the check that
it fits a model config. The backends: SentencePiece, trained here (`flmjax.data.sentencepiece_tokenizer`), and,
optionally, the released Qwen vocabulary (`flmjax.data.hf_tokenizer`).

Every tokenizer offers the same small interface (`Tokenizer`): `encode(text) -> ids` (no BOS/EOS added),
`decode(ids) -> text`, `vocab_size`, `wait_id`, `id_to_piece(id)` and `special_ids`. The text row holds
monologue tokens and `<wait>` everywhere else, so two rules hold for both backends:

- `encode` never yields `wait_id`, whatever the text: a transcript containing the literal string "<wait>" is
  tokenized as ordinary characters. Only the monologue alignment puts `<wait>` in the text row.
- `decode` drops `<wait>` and the other special tokens and returns the text; an id outside
  `[0, vocab_size)` is an `IndexError`.

`check_compatible(tokenizer, model_config)` requires `tokenizer.vocab_size <= config.vocab_size` (a model's
text vocabulary may be padded beyond the tokenizer, e.g. to a multiple of 128 for sharding; the released model
is the equal case, 151668 = 151665 + 3) and `tokenizer.wait_id == config.text_wait_id`.
"""

from __future__ import annotations

import os
from typing import Iterable, Protocol, runtime_checkable

from flmjax.config import ConfigError, ModelConfig
from flmjax.data.hf_tokenizer import HFTokenizer, read_wait_id
from flmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer
from flmjax.data.tokenizer_base import WAIT_PIECE


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
