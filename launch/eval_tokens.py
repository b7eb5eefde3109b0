"""`launch.eval tokens`: token-level duplex metrics without audio (`flmjax.eval.dialogs`) of a checkpoint and/or
fresh params of a preset on held-out dialog records, beside the records' own reference figures; the table it
prints and the JSON report it writes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax

from flmjax import checkpoints, model, presets
from flmjax.data import text
from flmjax.data.dataset_source import DialogSource
from flmjax.data.examples import SourceRule
from flmjax.data.synthetic import SILENCE_FRAME
from flmjax.errors import UserError
from flmjax.eval import dialogs, monologue_quality

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
