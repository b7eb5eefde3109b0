"""`launch.eval fdb`: Full-Duplex-Bench over a dataset folder: its flags, the samples found and checked, the
pending ones streamed through the model into an FDB results folder (`flmjax.eval.fdb_run`), and the finished
ones scored (`flmjax.eval.fdb_score`); a sample that cannot be used is skipped with its reason.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from flmjax import checkpoints, codec
from flmjax.data import text
from flmjax.eval import fdb_io, fdb_run, fdb_score
from flmjax.eval.fdb_io import FdbError
from flmjax.infer import SamplingConfig


def add_fdb_arguments(parser: argparse.ArgumentParser) -> None:
    """The `fdb` command's flags."""
    parser.add_argument("--data", required=True, help="FDB dataset folder (searched for sample folders)")
    parser.add_argument("--out", required=True, help="output root: OUT/<sample path>/output.wav, summary.md/json")
    parser.add_argument("--checkpoint", help="released-format folder or training workdir (needed to run samples)")
    parser.add_argument("--step", type=int, help="training checkpoint step (default: newest complete)")
    parser.add_argument("--mimi", help="Mimi folder (model.safetensors [+ mimi_config.json]); needed to run samples")
    parser.add_argument("--batch", type=int, default=4, help="samples streamed together as one batch")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (with the repetition penalties)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--max_frames", type=int, help="KV cache frames per session (default: the longest sample of the dataset)"
    )
    parser.add_argument(
        "--sliding_window",
        action="store_true",
        help="past max_frames, attend to the last max_frames frames instead of stopping",
    )
    parser.add_argument("--limit", type=int, help="only the first N samples (in path order)")
    parser.add_argument("--no_score", action="store_true", help="run the model only; no summary")
    parser.add_argument(
        "--transcripts",
        choices=("flmjax", "keep"),
        default="flmjax",
        help="flmjax: write every output.json with flmjax's recogniser (PocketSphinx); keep: score "
        "an output.json already there (e.g. from FDB's get_transcript/asr.py), write only missing ones",
    )
    parser.add_argument(
        "--icc_gt",
        help="FDB's icc_gt_distribution.json (in its repository, v1_v1.5/evaluation/; "
        "non-commercial licence) for the backchannel JSD",
    )
    parser.add_argument("--tokenizer", help="show the monologue in timeline.png as text with this tokenizer")
    parser.add_argument("--timeline", help="the sample (path under --data) drawn in timeline.png")
    parser.add_argument(
        "--allow_nonfinite",
        action="store_true",
        help="hear NaN/Inf samples of an input.wav as silence (with a warning) instead of skipping it",
    )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _reasons(skipped: dict[str, str]) -> str:
    return "; ".join(f"{rel}: {reason}" for rel, reason in sorted(skipped.items()))


def run_fdb_command(args: argparse.Namespace) -> int:
    """Runs the `fdb` command (flags of `add_fdb_arguments`): 0 when any sample finished (those skipped are
    listed); a bad dataset, checkpoint, codec or command line, or every sample skipped, raises a `UserError`."""
    if args.batch < 1:
        raise FdbError(f"--batch {args.batch}: must be at least 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise FdbError(f"--max_frames {args.max_frames}: must be at least 1 (leave it out for the longest sample)")
    data, out = pathlib.Path(args.data), pathlib.Path(args.out)
    skipped: dict[str, str] = {}  # rel -> why it is neither run nor scored
    found = fdb_io.discover_samples(data, skipped)
    if args.limit is not None:
        found = found[: max(0, args.limit)]
    if not found and not skipped:
        raise FdbError(
            f"no FDB samples under {data} (folders with input.wav and turn_taking.json, pause.json, "
            "interrupt.json or metadata.json, or input.wav under a *backchannel* folder)"
        )
    skipped.update({s.rel: problem for s in found if (problem := fdb_io.sample_problem(s)) is not None})
    for rel, reason in sorted(skipped.items()):
        _stderr(f"fdb: warning: skipping {rel}: {reason}")
    samples = [s for s in found if s.rel not in skipped]
    if not samples:
        raise FdbError(f"every sample under {data} was skipped: {_reasons(skipped)}")
    tasks = sorted({s.task for s in samples})
    pending = [s for s in samples if not fdb_io.is_complete(s, out)]
    _stderr(
        f"fdb: {len(samples)} samples in {len(tasks)} tasks ({', '.join(tasks)}); "
        f"{len(samples) - len(pending)} already done, {len(pending)} to run"
        + (f"; {len(skipped)} skipped" if skipped else "")
    )
    if not pending:
        _stderr(f"fdb: nothing new to do: every sample has its {fdb_io.OUTPUT_WAV} in {out}")
    else:
        if not args.checkpoint or not args.mimi:
            raise FdbError(f"{len(pending)} samples need running: give --checkpoint and --mimi")
        config, params, loaded = checkpoints.load_model(args.checkpoint, args.step)
        _stderr(f"model: {loaded}")
        mimi_config, mimi_params = codec.load_codec(args.mimi)
        # The longest session of all samples, not just the pending ones: a resumed run compiles the same cache.
        max_frames = args.max_frames or max(fdb_run.session_frames(s, p) for s in samples for p in s.prefixes)
        stats = fdb_run.run_samples(
            pending,
            out,
            config,
            params,
            mimi_config,
            mimi_params,
            batch=args.batch,
            sampling=SamplingConfig.greedy() if args.greedy else SamplingConfig(),
            seed=args.seed,
            max_frames=max_frames,
            sliding_window=args.sliding_window,
            log=_stderr,
            done_before=len(samples) - len(pending),
            total=len(samples),
            allow_nonfinite=args.allow_nonfinite,
        )
        skipped.update(stats.skipped)
        _stderr(
            f"fdb: ran {stats.samples} samples, {stats.audio_s:.1f} s of audio in {stats.wall_s:.1f} s wall "
            f"(real-time factor {stats.real_time_factor:.2f}, compilation included)"
        )
    finished = [s for s in samples if s.rel not in skipped and fdb_io.is_complete(s, out)]
    if not finished:
        raise FdbError(f"no sample finished: {len(skipped)} skipped ({_reasons(skipped)})")
    if args.no_score:
        _print_skipped(skipped, len(found))
        return 0
    tokenizer = None
    if args.tokenizer:
        try:
            tokenizer = text.load_tokenizer(args.tokenizer)
        except ValueError as error:
            raise FdbError(f"--tokenizer {args.tokenizer}: {error}") from None
    icc_gt = fdb_score.load_icc_gt(args.icc_gt) if args.icc_gt else None
    md_path, json_path, timeline_path = fdb_score.score_samples(
        samples,
        out,
        transcripts=args.transcripts,
        icc_gt=icc_gt,
        tokenizer=tokenizer,
        timeline_sample=args.timeline,
        skipped=skipped,
        allow_nonfinite=args.allow_nonfinite,
        log=_stderr,
    )
    print(md_path.read_text())
    print(f"wrote {md_path}, {json_path}" + (f", {timeline_path}" if timeline_path else ""))
    return 0


def _print_skipped(skipped: dict[str, str], total: int) -> None:
    if skipped:
        print(f"skipped {len(skipped)} of {total} samples:")
        for rel, reason in sorted(skipped.items()):
            print(f"  {rel}: {reason}")
