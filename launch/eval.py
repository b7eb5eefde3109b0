"""Evaluation of a model's full-duplex behaviour.

    python -m launch.eval fdb --data DIR --checkpoint CKPT --mimi MIMI --out OUT [--batch 4] [--greedy]
                              [--seed 0] [--no_score] [--transcripts flmjax|keep] [--icc_gt PATH]
                              [--tokenizer TOK] [--timeline SAMPLE]
    python -m launch.eval tokens --checkpoint CKPT [--untrained PRESET] --data_dir DATA
                                 [--dataset synthetic] [--split validation_dialog] [--dialogs N] [--batch 8]
                                 [--frames N] [--text_temperature 0] [--placement auto|leading|trailing|none]
                                 [--out OUT.json]

`fdb`: Full-Duplex-Bench (`flmjax.eval.fdb_io`, `fdb_run`, `fdb_score`, `fdb_metrics`): every sample folder
under DIR holding `input.wav` and its task file (`turn_taking.json`, `pause.json`, `interrupt.json`, or v1.5
`metadata.json`) is streamed through the model frame by frame as live (v1.5's `clean_input.wav` too), several
sessions in parallel, and OUT becomes an FDB results folder its own scripts score unchanged (`output.wav`,
`output.json`, copies of `input.wav` and the task files; v1.5 `clean_output.wav`/`.json`); finished samples are
not redone. Then (unless `--no_score`) the same files are scored here with FDB's definitions (`fdb_*` columns,
flmjax's own views as `flmjax_*`) into `OUT/summary.md` + `summary.json` per task folder and `OUT/timeline.png`
of one session.

`tokens`: token-level duplex metrics without audio (`flmjax.eval.dialogs`). The streaming model hears the user
channel of N held-out dialog records whose turns are known, several dialogs as parallel sessions, greedily
(`--text_temperature T`: the monologue token sampled at T, audio still argmax; greedy text stays silent while
`<wait>` is the single likeliest token, even when most of the mass is on starting to talk, as on the main job's
tiny model). The user's activity comes from the records' listen segments, the model's from its own tokens
(speaking: its speak codes are not the synthetic corpus's silence frame; thinking: its monologue token is not `<wait>`).
Reported: turn-over rate and turn-taking latency (responsiveness), interruption stop rate and stop latency,
barge-in rate (duplexity), the share of frames the model is active, and the monologue quality in the model's
placement (trailing: WER of its free-running text with the audio forced; leading: teacher-forced speak-code
accuracy where the assistant speaks). Each of `--checkpoint` (a training workdir, the main job's workdir
(its last stage), a step folder, or a released-format folder) and `--untrained PRESET` (fresh params of a preset: the
baseline) is a column, beside the `reference` column: the records' own model channel scored the same way.
Prints a table; `--out` writes every figure and the per-dialog details as JSON.

A bad command line, dataset, checkpoint or tokenizer (one that does not match the model:
`TokenizerMismatchError`) is one line, `error: ...`, and exit status 2. `fdb` skips bad samples with their
reasons (listed in its summary) and exits 0 if any sample finished.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Any, Sequence

import jax

from flmjax import checkpoints, codec, model, presets
from flmjax.data import text
from flmjax.data.dataset_source import DialogSource
from flmjax.data.examples import SourceRule
from flmjax.data.synthetic import SILENCE_FRAME
from flmjax.errors import UserError
from flmjax.eval import dialogs, fdb_io, fdb_run, fdb_score, monologue_quality
from flmjax.eval.fdb_io import FdbError
from flmjax.infer import SamplingConfig
from launch import cli

TABLE_ROWS = (
    ("speaking/turn_over_rate", "turn-over rate (higher better)"),
    ("speaking/turn_latency_s", "turn-taking latency s"),
    ("speaking/interruption_stop_rate", "interruption stop rate"),
    ("speaking/stop_latency_s", "stop latency s"),
    ("speaking/interruption_turn_over_rate", "interruption turn-over rate"),
    ("speaking/interruption_response_latency_s", "interruption response latency s"),
    ("speaking/barge_in_rate", "barge-in rate (lower better)"),
    ("speaking/active_fraction", "speaking fraction of frames"),
    ("speaking/n_user_turns", "user turns"),
    ("speaking/n_interruptions", "interruptions (user starts over model)"),
    ("speaking/n_model_onsets", "model speech onsets"),
    ("thinking/turn_over_rate", "thinking: turn-over rate"),
    ("thinking/turn_latency_s", "thinking: turn-taking latency s"),
    ("thinking/interruption_stop_rate", "thinking: interruption stop rate"),
    ("thinking/barge_in_rate", "thinking: barge-in rate"),
    ("thinking/active_fraction", "thinking: text fraction of frames"),
    ("wer", "monologue WER (trailing)"),
    ("code_accuracy", "speak code accuracy (leading)"),
    ("code_accuracy_c0", "semantic code accuracy (leading)"),
)


class EvalError(UserError, ValueError):
    """A bad command line or input; `cli.run` prints it as one line and exits 2."""


def load_checkpoint(path: str, step: int | None = None) -> tuple[Any, Any, dict | None, str]:
    """(model config, params, stage config dict or None, description) of a checkpoint folder (any path
    `flmjax.checkpoints.resolve` takes)."""
    checkpoint = checkpoints.resolve(path, step, what="--checkpoint")
    return checkpoint.model_config(), checkpoint.params(), checkpoint.stage_config(), checkpoint.describe()


def _placement_rule(args, stage_config: dict | None):
    if args.placement == "none":
        return None
    if args.placement == "auto":
        rule = monologue_quality.monologue_rule((stage_config or {}).get("data", {}).get("sources"))
        if rule is not None:
            return rule
        placement = "leading"  # the conversational model's (stage 4)
    else:
        placement = args.placement
    return SourceRule("dialog", placement, args.lead_frames, args.trail_frames)


def _format(value) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value)}"
    return f"{value:.3f}"


def table(columns: dict[str, dict]) -> str:
    """Rows of TABLE_ROWS (those any column has), one column per model plus `reference`."""
    names = list(columns)
    rows = [
        (label, [columns[n].get(key) for n in names])
        for key, label in TABLE_ROWS
        if any(key in columns[n] for n in names)
    ]
    width = max(len(label) for label, _ in rows)
    widths = [max(12, len(n)) for n in names]
    lines = [" " * width + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths))]
    lines += [
        label.ljust(width) + "  " + "  ".join(_format(v).rjust(w) for v, w in zip(values, widths))
        for label, values in rows
    ]
    return "\n".join(lines)


def run_tokens(args) -> int:
    if not args.checkpoint and not args.untrained:
        raise EvalError("give --checkpoint CKPT and/or --untrained PRESET")
    try:
        source = DialogSource(args.data_dir, args.dataset, args.split)
    except (ValueError, FileNotFoundError) as error:
        raise EvalError(str(error)) from None
    records = [source[i] for i in range(min(args.dialogs, len(source)) if args.dialogs else len(source))]
    records = [r for r in records if r.speak_codes is not None and r.listen_codes is not None]
    if not records:
        raise EvalError(f"{source!r} holds no dialog records (both channels) to evaluate")

    models = []  # (column name, config, params, stage config, description)
    if args.checkpoint:
        config, params, stage_config, description = load_checkpoint(args.checkpoint, args.step)
        models.append(("trained", config, params, stage_config, description))
    if args.untrained:
        try:
            config = presets.preset(args.untrained)
        except (KeyError, ValueError) as error:
            raise EvalError(f"--untrained: {error}") from None
        params = model.init_params(config, jax.random.key(args.seed))
        models.append(
            (f"untrained {args.untrained}", config, params, None, f"fresh {args.untrained} params (seed {args.seed})")
        )

    tokenizer_path = args.tokenizer or os.path.join(args.data_dir, "tokenizer.model")
    tokenizer = text.load_tokenizer(tokenizer_path) if os.path.exists(tokenizer_path) else None
    report: dict[str, Any] = {
        "command": ["python", "-m", "launch.eval", *args.argv],
        "data": repr(source),
        "dialogs": len(records),
        "frames": args.frames or None,
        "text_temperature": args.text_temperature,
        "models": {},
    }
    columns: dict[str, dict] = {}
    reference = None
    for name, config, params, stage_config, description in models:
        if tokenizer is not None:
            text.check_compatible(tokenizer, config)
        rule = _placement_rule(args, stage_config) if tokenizer is not None else None
        print(
            f"{name}: {description}; {len(records)} dialogs, "
            f"{'first ' + str(args.frames) + ' frames' if args.frames else 'whole records'}, "
            f"{'greedy' if args.text_temperature <= 0 else f'text temperature {args.text_temperature}'}, monologue "
            f"{rule.placement if rule else 'not scored'}",
            file=sys.stderr,
            flush=True,
        )
        start = time.perf_counter()
        result = dialogs.evaluate_dialogs(
            config,
            params,
            records,
            tokenizer,
            batch_size=args.batch,
            max_frames=args.frames or None,
            seed=args.seed,
            quality_rule=rule,
            sampling=dialogs.decoding(args.text_temperature),
            silence_codes=SILENCE_FRAME,
        )
        seconds = time.perf_counter() - start
        print(f"{name}: evaluated in {seconds:.1f}s", file=sys.stderr, flush=True)
        columns[name] = result.metrics
        reference = reference or result.reference
        report["models"][name] = {
            "checkpoint": description,
            "placement": rule.placement if rule else None,
            "seconds": seconds,
            **result.to_json(),
        }
    columns["reference"] = reference
    report["reference"] = reference
    print(table(columns))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- fdb
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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m launch.eval", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tokens = commands.add_parser(
        "tokens", help="token-level duplex metrics of the streaming model on dialog records with known turns (no audio)"
    )
    tokens.add_argument("--checkpoint", help="a training workdir, the main job's workdir, or a released folder")
    tokens.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    tokens.add_argument("--untrained", metavar="PRESET", help="also evaluate fresh params of this preset")
    tokens.add_argument("--data_dir", required=True, help="where launch.prepare_data built the datasets")
    tokens.add_argument("--dataset", default="synthetic")
    tokens.add_argument("--split", default="validation_dialog")
    tokens.add_argument("--dialogs", type=int, default=0, help="first N records of the split (0: all)")
    tokens.add_argument("--batch", type=int, default=8, help="dialogs streamed in parallel")
    tokens.add_argument(
        "--frames", type=int, default=0, help="evaluate each dialog's first N frames (0: whole records)"
    )
    tokens.add_argument(
        "--placement",
        choices=("auto", "leading", "trailing", "none"),
        default="auto",
        help="monologue quality: auto = the checkpoint's stage (else leading)",
    )
    tokens.add_argument("--lead_frames", type=int, default=2)
    tokens.add_argument("--trail_frames", type=int, default=1)
    tokens.add_argument("--tokenizer", help="default: DATA_DIR/tokenizer.model")
    tokens.add_argument(
        "--text_temperature",
        type=float,
        default=0.0,
        help="0: greedy; else sample the monologue token at this temperature (audio argmax)",
    )
    tokens.add_argument("--seed", type=int, default=0, help="untrained params and sampling")
    tokens.add_argument("--out", help="write the figures and per-dialog details as JSON")
    add_fdb_arguments(
        commands.add_parser(
            "fdb",
            help="Full-Duplex-Bench file contract: stream each sample's input.wav, write a time-synchronous "
            "output.wav, score the outputs (see flmjax.eval.fdb_run)",
        )
    )
    args = parser.parse_args(argv)
    args.argv = list(argv)
    return args


COMMANDS = {"tokens": run_tokens, "fdb": run_fdb_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a command; a bad input or setting raises (`cli.run` prints it as one line, exit status 2)."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(cli.run(main))
