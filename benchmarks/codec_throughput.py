"""Codec encoding throughput: one batched `encode` call vs one call per utterance, on the same utterances.

    python -m benchmarks.codec_throughput [--utterances 32] [--device cpu|cuda] [--full-size-dac]

Tiny random-init codecs keep each backend's real geometry (24 kHz, 25 frames/s; 8 codebooks for higgs). With
--full-size-dac the default 44.1 kHz DAC architecture (76.7M parameters, random weights) is measured too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from data_pipeline.codecs import DacCodec, HiggsCodec, tiny_dac, tiny_higgs


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--utterances", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="utterance length (all equal, whole frames)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full-size-dac", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    codecs = {"higgs (tiny)": HiggsCodec(tiny_higgs(0), args.device), "dac (tiny)": DacCodec(tiny_dac(0), args.device)}
    if args.full_size_dac:
        import dac

        codecs["dac (full size, 44.1 kHz)"] = DacCodec(dac.DAC(), args.device)
    print(f"device {args.device}, threads {torch.get_num_threads()}, {args.utterances} x {args.seconds:g} s")
    for name, codec in codecs.items():
        samples = int(args.seconds * codec.frame_rate) * round(codec.sample_rate / codec.frame_rate)
        waves = [0.1 * torch.randn(samples) for _ in range(args.utterances)]
        batched = _time(lambda c=codec, w=waves: c.encode(w, c.sample_rate), args.repeats)
        single = _time(lambda c=codec, w=waves: [c.encode([x], c.sample_rate) for x in w], args.repeats)
        audio = args.utterances * args.seconds
        print(f"{name:<26} batched {audio / batched:8.1f} s audio/s   one at a time {audio / single:8.1f} s audio/s"
              f"   speed-up {single / batched:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
