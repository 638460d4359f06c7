"""Codec encoding throughput: batched `encode` calls vs one call per utterance, on the same utterances.

    python -m benchmarks.codec_throughput [--utterances 32] [--seconds 4] [--mix 1,20] [--batch 16]
                                          [--device cpu|cuda] [--full-size-dac]

Tiny random-init codecs keep each backend's real geometry (24 kHz, 25 frames/s; 8 codebooks for higgs). With
--full-size-dac the default 44.1 kHz DAC architecture (76.7M parameters, random weights) is measured too.

Equal lengths (default) measure batching alone. `--mix LO,HI` draws lengths uniformly from LO-HI seconds and compares
one at a time, batches in file order, and batches in length order (`encode_by_length`, what `prepare` does).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from data_pipeline.codecs import DacCodec, HiggsCodec, tiny_dac, tiny_higgs
from data_pipeline.prepare.encode_rows import encode_by_length


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(codec, seconds: list[float], batch: int, repeats: int, mixed: bool) -> str:
    """One line of audio seconds encoded per wall second for each way of calling `codec.encode`."""
    hop, sr = round(codec.sample_rate / codec.frame_rate), codec.sample_rate
    waves = [0.1 * torch.randn(max(1, int(s * codec.frame_rate)) * hop) for s in seconds]
    audio = sum(w.numel() for w in waves) / sr

    def in_order() -> None:
        for start in range(0, len(waves), batch):
            codec.encode(waves[start : start + batch], sr)

    keyed = {(Path(f"u{i}"), "target"): (w, sr) for i, w in enumerate(waves)}
    single = _time(lambda: [codec.encode([x], sr) for x in waves], repeats)
    times = {"one at a time": single, ("batched, file order" if mixed else "batched"): _time(in_order, repeats)}
    if mixed:
        times["batched, length order"] = _time(lambda: encode_by_length(keyed, codec, batch), repeats)
    best = min(t for what, t in times.items() if what != "one at a time")
    parts = ", ".join(f"{what} {audio / t:.1f}" for what, t in times.items())
    alone = [codec.encode([x], sr)[0] for x in waves]
    batched = [c for start in range(0, len(waves), batch) for c in codec.encode(waves[start : start + batch], sr)]
    same = sum(torch.equal(a, b) for a, b in zip(alone, batched, strict=True))
    return f"s audio/s: {parts}; speed-up {single / best:.2f}x; batched codes equal one-at-a-time: {same}/{len(waves)}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--utterances", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="utterance length (all equal, whole frames)")
    parser.add_argument("--mix", default=None, help="LO,HI: lengths drawn uniformly from LO-HI seconds instead")
    parser.add_argument("--batch", type=int, default=16, help="utterances per batched call (prepare --encode-batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full-size-dac", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    codecs = {"higgs (tiny)": HiggsCodec(tiny_higgs(0), args.device), "dac (tiny)": DacCodec(tiny_dac(0), args.device)}
    if args.full_size_dac:
        import dac

        codecs["dac (full size, 44.1 kHz)"] = DacCodec(dac.DAC(), args.device)
    rng = random.Random(0)
    if args.mix:
        lo, hi = (float(x) for x in args.mix.split(","))
        seconds = [rng.uniform(lo, hi) for _ in range(args.utterances)]
        shape = f"{args.utterances} utterances of {lo:g}-{hi:g} s"
    else:
        seconds = [args.seconds] * args.utterances
        shape = f"{args.utterances} x {args.seconds:g} s"
    print(f"device {args.device}, threads {torch.get_num_threads()}, {shape}, batches of {args.batch}")
    for name, codec in codecs.items():
        print(f"{name:<26} {_measure(codec, seconds, args.batch, args.repeats, mixed=bool(args.mix))}")


if __name__ == "__main__":
    main()
