"""Build a dialog dataset (ArrayRecord through TFDS) from a manifest, or from generated synthetic records.

    python -m launch.prepare_data --manifest M.jsonl --out DATA_DIR [--name dialogs] [--overwrite]
    python -m launch.prepare_data --synthetic N [--seed S] --out DATA_DIR [--name synthetic] [--overwrite]
    python -m launch.prepare_data --audio-manifest M.jsonl --mimi MIMI_DIR --out DATA_DIR [--name recordings]
        [--gap_s 0.8] [--sentence_end '.?!'] [--main_speaker SPEAKER_MAIN] [--mono_as reject|utterance]
        [--batch_files 4] [--overwrite]

The dataset lands in DATA_DIR/NAME/1.0.0 (read it with
`flmjax.data.dataset_source.DialogSource(DATA_DIR, NAME, split)` or `tfds.data_source(NAME, data_dir=DATA_DIR,
split=split)`). Records that fail validation are rejected and
reported, not fatal. A finished dataset is reused when its manifest and codes files are unchanged; changed ones
are an error unless --overwrite. A dataset is built beside the old one and replaces it only when whole; refusals
(changed inputs without --overwrite, every record rejected, a dataset folder holding its own inputs) change
nothing on disk. `--synthetic N` generates N records as a manifest beside DATA_DIR/synthetic_source, which
replaces that folder only when a build is due (splits `train_dialog`, `train_asr`, `train_tts`, `validation_*`),
then trains DATA_DIR/tokenizer.model on its text if there is none.
`--audio-manifest` reads recorded conversations in moshi-finetune's layout (stereo WAVs, left = assistant, right =
user, with word alignments beside them; see `flmjax.data.recordings`), encodes them with the JAX Mimi of
`--mimi` into DATA_DIR/NAME_source (codes and a manifest; files already encoded there are reused, so an
interrupted run resumes) and builds that manifest (splits `train_dialog`, and `train_tts`/`train_asr` for mono
files with `--mono_as utterance`). Its rejections (mono audio, no alignments, ...) are counted with the others.
Prints a summary table on stdout; a progress bar on stderr. Exits 2 with one `error:` line on errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Sequence

from flmjax import files
from flmjax.data import dataset, recording_encoder, recordings, sentencepiece_tokenizer, synthetic, word_alignments
from flmjax.data.dataset_source import BuildSummary, DatasetError, dataset_dir
from flmjax.data.manifest import read_manifest, write_manifest
from flmjax.data.records import CHANNELS
from launch import cli

DEFAULT_NAMES = {"manifest": "dialogs", "synthetic": "synthetic", "audio_manifest": "recordings"}
MESSAGES_SHOWN = 3  # per rejection category
TOKENIZER_FILE = "tokenizer.model"
SYNTHETIC_SOURCE = "synthetic_source"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m launch.prepare_data", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="JSON-lines manifest (flmjax.data.manifest)")
    source.add_argument("--synthetic", type=int, metavar="N", help="build from N generated records instead")
    source.add_argument(
        "--audio-manifest",
        "--audio_manifest",
        dest="audio_manifest",
        metavar="M.jsonl",
        help='JSON lines {"path": "x.wav", "duration": s} of stereo recordings with x.json '
        "alignments beside them (moshi-finetune's layout)",
    )
    parser.add_argument("--seed", type=int, help="seed of --synthetic (default 0)")
    parser.add_argument(
        "--tokenizer_vocab_size",
        type=int,
        default=1000,
        help="with --synthetic: most pieces of the SentencePiece model trained into "
        "DATA_DIR/tokenizer.model (a small corpus gives fewer)",
    )
    recorded = parser.add_argument_group("with --audio-manifest")
    recorded.add_argument("--mimi", help="Mimi folder: model.safetensors [+ mimi_config.json]")
    recorded.add_argument(
        "--gap_s",
        type=float,
        default=word_alignments.GAP_S,
        help="a silence longer than this (seconds) between words starts a new segment",
    )
    recorded.add_argument(
        "--sentence_end",
        default=word_alignments.SENTENCE_END,
        help="characters that end a sentence (and a segment) when they end a word",
    )
    recorded.add_argument(
        "--main_speaker",
        default=word_alignments.MAIN_SPEAKER,
        help="the alignments' speaker label of the assistant (left channel); any other label is the user",
    )
    recorded.add_argument(
        "--mono-as",
        "--mono_as",
        dest="mono_as",
        choices=recordings.MONO_AS,
        default="reject",
        help="mono files: reject them, or keep them as single-speaker utterances "
        "(TTS-style if the speaker is the main one, else ASR-style)",
    )
    recorded.add_argument("--batch_files", type=int, default=4, help="files encoded together")
    parser.add_argument("--out", required=True, help="data dir: the dataset goes to OUT/NAME/1.0.0")
    parser.add_argument("--name", help="dataset name (default: dialogs; synthetic with --synthetic)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if a finished build exists")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.synthetic is not None and args.synthetic <= 0:
        parser.error("--synthetic needs a positive number of records")
    if args.synthetic is None and args.seed is not None:
        parser.error("--seed goes with --synthetic")
    if (args.audio_manifest is None) != (args.mimi is None):
        parser.error("--audio-manifest and --mimi go together")
    if args.batch_files <= 0 or args.gap_s < 0:
        parser.error("--batch_files must be positive and --gap_s not negative")
    if args.name is None:
        args.name = DEFAULT_NAMES[next(key for key in DEFAULT_NAMES if getattr(args, key) is not None)]
    if not dataset.DATASET_NAME.match(args.name):
        parser.error(f"--name {args.name!r}: expected lower-case letters, digits and _, starting with a letter")
    return args


def write_synthetic_manifest(num_records: int, seed: int, folder: str) -> str:
    """Generates records with `flmjax.data.synthetic` and writes them as FOLDER/manifest.jsonl (+ codes).

    Splits are named `{train,validation}_{dialog,asr,tts}`, so that a stage can draw each kind of record with
    its own task (see configs/stages).
    """
    pairs = (
        (example.record, f"{example.split}_{example.kind}")
        for example in synthetic.generate_examples(num_records=num_records, seed=seed)
    )
    return write_manifest(pairs, folder)


def build_synthetic(args: argparse.Namespace) -> BuildSummary:
    """Generates the corpus beside OUT/synthetic_source and builds it. The new corpus replaces the old one only
    when a build is due (just before it, so the build reads it where it stays): a reused or refused build leaves
    OUT as it was (the generated copy is thrown away)."""
    source = os.path.join(args.out, SYNTHETIC_SOURCE)
    files.check_apart(dataset_dir(args.out, args.name), [source], what="the dataset")
    files.remove_leftovers(source)  # of a killed run (one run per data dir at a time)
    with files.staging_folder(source) as staging:
        generated = write_synthetic_manifest(args.synthetic, args.seed or 0, staging)
        existing = dataset.existing_build(generated, args.out, args.name, args.overwrite)
        manifest = os.path.join(source, os.path.basename(generated))
        if existing is None or not os.path.isfile(manifest):  # a build is due, or the corpus was deleted
            files.swap_in(staging, source)
    summary = existing or dataset.build_dataset(
        manifest, args.out, name=args.name, progress=not args.no_progress, overwrite=args.overwrite
    )
    train_synthetic_tokenizer(manifest, args.out, args.tokenizer_vocab_size)
    return summary


def train_synthetic_tokenizer(manifest: str, out: str, vocab_size: int) -> str:
    """Trains OUT/tokenizer.model on the synthetic training sentences, unless one is there already."""
    path = os.path.join(out, TOKENIZER_FILE)
    if os.path.exists(path):
        print(f"tokenizer {path} exists: kept", file=sys.stderr)
        return path
    sentences = [
        segment.text
        for entry in read_manifest(manifest)
        if entry.split.startswith("train")
        for channel in CHANNELS
        for segment in entry.load().segments(channel)
    ]
    model = sentencepiece_tokenizer.train_sentencepiece(sentences, vocab_size, hard_vocab_limit=False)
    with open(path + ".tmp", "wb") as f:
        f.write(model)
    os.replace(path + ".tmp", path)
    tokenizer = sentencepiece_tokenizer.SentencePieceTokenizer(path)
    print(f"tokenizer {path}: {tokenizer.vocab_size} pieces, <wait> = {tokenizer.wait_id}", file=sys.stderr)
    return path


def prepare_recordings(args: argparse.Namespace) -> recordings.PreparedRecordings:
    """Encodes --audio-manifest's recordings into OUT/NAME_source; raises `DatasetError` if none is usable."""
    from flmjax import codec

    def encoder():
        config, params = codec.load_codec(args.mimi)
        return recording_encoder.make_encoder(config, params, batch_size=2 * args.batch_files)

    rule = word_alignments.GroupingRule(args.gap_s, args.sentence_end, args.main_speaker)
    prepared = recordings.prepare_recordings(
        args.audio_manifest,
        os.path.join(args.out, f"{args.name}_source"),
        encoder,
        codec.codec_fingerprint(args.mimi),
        rule,
        args.mono_as,
        args.batch_files,
        progress=not args.no_progress,
    )
    print(
        f"recordings: {prepared.records} usable, {prepared.encoded} encoded now, {prepared.reused} already "
        f"encoded, {len(prepared.rejections)} rejected",
        file=sys.stderr,
    )
    if not prepared.records:
        reasons = "; ".join(f"{category}: {message}" for category, message in prepared.rejections[:MESSAGES_SHOWN])
        raise DatasetError(
            f"no usable recording in {args.audio_manifest} ({len(prepared.rejections)} rejected; {reasons})"
        )
    return prepared


def with_rejections(summary: BuildSummary, rejections: list[tuple[str, str]]) -> BuildSummary:
    """The summary with rejections found before the build (audio, alignments) counted in it."""
    merged: dict[str, list[str]] = {}
    for category, message in rejections:
        merged.setdefault(category, []).append(message)
    for category, messages in summary.rejections.items():
        merged.setdefault(category, []).extend(messages)
    return dataclasses.replace(summary, rejections=merged)


def format_table(rows: list[list[str]]) -> str:
    """Left-aligned first column, right-aligned others."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    )


def format_summary(summary: BuildSummary) -> str:
    state = "already built, nothing to do" if summary.already_built else "built"
    lines = [f"dataset {summary.name} at {summary.path} ({state})", f"from {summary.manifest}", ""]
    rows = [["split", "records", "hours", "frames", "words"]]
    hours = summary.hours
    for split in sorted(summary.records):
        rows.append(
            [
                split,
                str(summary.records[split]),
                f"{hours[split]:.3f}",
                str(summary.frames[split]),
                str(summary.text_words[split]),
            ]
        )
    rows.append(
        [
            "total",
            str(sum(summary.records.values())),
            f"{sum(hours.values()):.3f}",
            str(sum(summary.frames.values())),
            str(sum(summary.text_words.values())),
        ]
    )
    lines.append(format_table(rows))
    lines.append("")
    lines.append(f"rejected {summary.rejected}")
    for category, messages in sorted(summary.rejections.items(), key=lambda item: (-len(item[1]), item[0])):
        lines.append(f"  {category}: {len(messages)}")
        lines.extend(f"    {message}" for message in messages[:MESSAGES_SHOWN])
        if len(messages) > MESSAGES_SHOWN:
            lines.append(f"    ... and {len(messages) - MESSAGES_SHOWN} more")
    if summary.left_out_splits:
        lines.append(f"left out (every record rejected): {', '.join(summary.left_out_splits)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.synthetic is not None:
        summary = build_synthetic(args)
    elif args.audio_manifest is not None:
        prepared = prepare_recordings(args)
        summary = with_rejections(
            dataset.build_dataset(
                prepared.manifest, args.out, name=args.name, progress=not args.no_progress, overwrite=args.overwrite
            ),
            prepared.rejections,
        )
    else:
        summary = dataset.build_dataset(
            args.manifest, args.out, name=args.name, progress=not args.no_progress, overwrite=args.overwrite
        )
    print(format_summary(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
