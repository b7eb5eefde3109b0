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

This module is the command line; each command's work is in its own module, `launch.eval_tokens` and
`launch.eval_fdb`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from launch import cli
from launch.eval_fdb import add_fdb_arguments, run_fdb_command
from launch.eval_tokens import run_tokens


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
