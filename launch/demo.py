"""The main job until training lands: build the `tiny` FLM-Audio, run it, and print what it computed.

    python -m launch.demo [--preset tiny] [--frames 12] [--seed 0]

Runs one conversation's worth of frames through the full causal forward, checks that the KV-cached
streaming form gives the same numbers, and greedily decodes the depth model's 8 codebooks for the last frame.
A bad setting (`--frames 0`) is one line, `error: ...`, and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from flmjax import model, presets
from flmjax.errors import UserError
from launch import cli


def count_params(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def main(argv=None) -> None:
    parser = cli.ArgumentParser(
        prog="python -m launch.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=sorted(presets.PRESETS))
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.frames < 1:
        raise UserError(f"--frames {args.frames}: must be at least 1")

    config = presets.preset(args.preset)
    start = time.perf_counter()
    params = jax.jit(functools.partial(model.init_params, config))(jax.random.key(args.seed))
    print(
        f"model {args.preset}: {count_params(params) / 1e6:.2f}M params "
        f"(temporal {count_params({k: v for k, v in params.items() if k != 'depth'}) / 1e6:.2f}M, "
        f"depth {count_params(params['depth']) / 1e6:.2f}M), initialised in {time.perf_counter() - start:.1f}s"
    )

    # One session: the user speaks random codes; the model's own rows start from <wait> / aud_pad.
    rng = np.random.default_rng(args.seed)
    frames = args.frames
    listen_codes = rng.integers(0, 2048, (1, frames, config.aud_channel))
    text_ids = np.full((1, frames), config.text_wait_id)
    text_ids[0, 1:] = rng.integers(0, config.vocab_size, frames - 1)
    speak_codes = rng.integers(0, 2048, (1, frames, config.aud_channel))
    speak_codes[:, 0] = config.aud_pad_id

    text_logits, hidden = jax.jit(functools.partial(model.forward, config))(params, text_ids, speak_codes, listen_codes)
    print(f"forward: text_logits {text_logits.shape} {text_logits.dtype}, hidden {hidden.shape}")
    print("greedy text token per frame:", np.asarray(jnp.argmax(text_logits[0], -1)).tolist())

    step = jax.jit(functools.partial(model.forward_cached, config))
    cache = model.init_cache(config, batch_size=1, max_frames=frames)
    streamed = []
    for t in range(frames):
        logits, _, cache = step(
            params, cache, text_ids[:, t : t + 1], speak_codes[:, t : t + 1], listen_codes[:, t : t + 1]
        )
        streamed.append(logits)
    difference = float(jnp.max(jnp.abs(jnp.concatenate(streamed, 1) - text_logits)))
    print(f"KV-cached, one frame at a time: max |logits - forward| = {difference:.2e}")

    codes = np.zeros((1, 0), np.int32)
    for _ in range(config.aud_channel):
        depth_logits = model.depth_forward(config, params, hidden[:, -1], codes)
        codes = np.concatenate([codes, np.asarray(jnp.argmax(depth_logits[:, -1], -1))[:, None]], axis=1)
    print("depth model, greedy codebooks 0..7 of the last frame:", codes[0].tolist())


if __name__ == "__main__":
    sys.exit(cli.run(main))
