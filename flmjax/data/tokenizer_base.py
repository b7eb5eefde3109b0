"""What both text tokenizer backends share: the `<wait>` piece, the `wait_id` and `special_ids` properties, and
the id range check of `decode` and `id_to_piece` (an id outside `[0, vocab_size)` is an `IndexError`). The
backends are `flmjax.data.sentencepiece_tokenizer` and `flmjax.data.hf_tokenizer`; the interface they offer is
`flmjax.data.text.Tokenizer`.
"""

from __future__ import annotations

from typing import Iterable

WAIT_PIECE = "<wait>"


def ids_in_range(ids: Iterable[int], vocab_size: int) -> list[int]:
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise IndexError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


class SpecialIds:
    """`wait_id` and `special_ids` of a backend that sets `_wait_id` and `_special_ids`."""

    _wait_id: int
    _special_ids: dict[str, int]

    @property
    def wait_id(self) -> int:
        return self._wait_id

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self._special_ids)
