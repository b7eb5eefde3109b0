"""Train a SentencePiece tokenizer for the text row from text files (one sentence per line).

    python -m launch.train_tokenizer --input a.txt[,b.txt] --vocab_size 1000 --out tok.model \
        [--model_type unigram|bpe] [--soft_vocab_limit] [--byte_fallback] [--overwrite]

The model reserves the specials at fixed ids (flmjax.data.sentencepiece_tokenizer.SPECIAL_TOKENS: 0 <unk>,
1 <s>, 2 </s>, 3 <wait>), matching the `tiny` and `small` model presets. With the default --num_threads 1 the
same files and options give a byte-identical model. An existing --out is kept unless --overwrite is given. A
corpus or setting SentencePiece cannot use (too large a vocabulary, no text, unreadable input) is one line,
`error: ...`, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from flmjax.data import sentencepiece_tokenizer
from flmjax.errors import UserError
from launch import cli


class TokenizerTrainingError(UserError, ValueError):
    """A corpus or setting SentencePiece cannot train on; the message says what to change."""


def read_sentences(paths, counts):
    """Yields the non-empty lines of `paths`, counting sentences and characters into `counts`."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\r\n")
                if line.strip():
                    counts["sentences"] += 1
                    counts["chars"] += len(line)
                    yield line


def main(argv=None) -> None:
    parser = cli.ArgumentParser(
        prog="python -m launch.train_tokenizer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input",
        required=True,
        action="append",
        help="text file(s), one sentence per line; comma-separated and/or repeated",
    )
    parser.add_argument("--vocab_size", required=True, type=int, help="pieces in all, specials included")
    parser.add_argument("--out", required=True, help="where to write the .model file")
    parser.add_argument("--model_type", default="unigram", choices=sentencepiece_tokenizer.MODEL_TYPES)
    parser.add_argument(
        "--character_coverage",
        type=float,
        default=0.9995,
        help="share of characters the vocabulary covers (1.0 for small alphabets)",
    )
    parser.add_argument(
        "--byte_fallback",
        action="store_true",
        help="spell unknown characters as UTF-8 bytes (adds 256 pieces) instead of <unk>",
    )
    parser.add_argument(
        "--soft_vocab_limit",
        action="store_true",
        help="accept a smaller vocabulary when the corpus cannot fill --vocab_size",
    )
    parser.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="trainer threads (the model depends on it; 1, the default, for reproducible models)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)

    inputs = [p for item in args.input for p in item.split(",") if p]
    missing = [p for p in inputs if not os.path.isfile(p)]
    if missing:
        parser.error(f"input file(s) not found: {', '.join(missing)}")
    if os.path.exists(args.out) and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")

    print(
        f"training a {args.model_type} SentencePiece model, vocab {args.vocab_size}, from {', '.join(inputs)}",
        flush=True,
    )
    counts = {"sentences": 0, "chars": 0}
    start = time.perf_counter()
    try:
        model_bytes = sentencepiece_tokenizer.train_sentencepiece(
            read_sentences(inputs, counts),
            args.vocab_size,
            args.model_type,
            character_coverage=args.character_coverage,
            byte_fallback=args.byte_fallback,
            hard_vocab_limit=not args.soft_vocab_limit,
            num_threads=args.num_threads,
        )
    except ValueError as error:  # train_sentencepiece's own checks: a setting or corpus to change
        raise TokenizerTrainingError(str(error)) from None
    elapsed = time.perf_counter() - start
    tokenizer = sentencepiece_tokenizer.SentencePieceTokenizer(model_bytes)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    partial = f"{args.out}.partial"
    with open(partial, "wb") as f:
        f.write(model_bytes)
    os.replace(partial, args.out)  # never leave a half-written model behind

    specials = " ".join(f"{piece}={i}" for piece, i in sorted(tokenizer.special_ids.items(), key=lambda kv: kv[1]))
    print(f"read {counts['sentences']} sentences ({counts['chars']} characters); trained in {elapsed:.1f}s")
    print(f"wrote {args.out}: vocab size {tokenizer.vocab_size}; specials {specials}")
    if tokenizer.vocab_size < args.vocab_size:
        print(f"note: the corpus filled only {tokenizer.vocab_size} of the {args.vocab_size} requested pieces")


if __name__ == "__main__":
    sys.exit(cli.run(main))
