"""Model FLOPs utilisation of the LLM part and tokens/s: a ~1B-parameter Higgs Audio config (`1b` preset, dual FFN,
8 codebooks x 1024) at 2048 tokens per sample, DeepSpeed ZeRO-2 bf16, synthetic voice-cloning batches built through
the real layout and collator. Also the peak memory of the `3b` preset under ZeRO-3 with CPU offload (--zero3-offload).

    python -m benchmarks.mfu [--preset 1b] [--micro-batch 4] [--steps 20] [--zero3-offload]

Without a GPU it says so and runs the tiny preset for a few steps on CPU (no MFU: CPU peak FLOPs are not tabled).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import deepspeed  # noqa: E402
import torch  # noqa: E402

from benchmarks._progress import mark  # noqa: E402
from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions  # noqa: E402
from data_pipeline.layout.text_tokens import build_tiny_tokenizer  # noqa: E402
from data_pipeline.loading.collator import VoiceCloningCollator  # noqa: E402
from data_pipeline.types import AudioGeometry
from ds_train.components.distributed import init_distributed  # noqa: E402
from ds_train.config import RunConfig  # noqa: E402
from ds_train.model.build import build_model  # noqa: E402
from ds_train.model.flops import llm_flops_per_token, peak_flops  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def synthetic_batch(layout: LayoutBuilder, geo: AudioGeometry, batch: int, tokens: int) -> dict:
    """Voice-cloning samples of about `tokens` tokens: 40 % reference audio, 60 % target audio, short texts."""
    frames = int(tokens * 0.9) - 2 * (geo.num_codebooks + 3)
    ref, tgt = int(frames * 0.4), frames - int(frames * 0.4)
    codes = lambda steps: torch.randint(0, geo.codec_codebook_size, (geo.num_codebooks, steps))  # noqa: E731
    exs = [
        layout.build(f"s{i}", "a reference sentence", codes(ref), "the text to speak", codes(tgt),
                     ref_wave_16k=0.1 * torch.randn(ref * 640))
        for i in range(batch)
    ]  # fmt: skip
    return VoiceCloningCollator(layout.ids.pad, geo, whisper=layout.options.whisper)(exs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="1b")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ds", default="zero2_bf16.json")
    parser.add_argument("--whisper", action="store_true", help="include the Whisper tower (large-v3 size)")
    parser.add_argument("--zero3-offload", action="store_true", help="3b preset, ZeRO-3 + CPU offload, peak memory")
    args = parser.parse_args()
    mark("imports done")
    gpu = torch.cuda.is_available()
    if args.zero3_offload:
        args.preset, args.ds, args.steps = "3b", "zero3_offload_bf16.json", min(args.steps, 5)
    if not gpu:
        print("no GPU here: running the tiny preset on CPU for a smoke test; MFU is only reported on a GPU")
        args.preset, args.micro_batch, args.tokens, args.steps, args.ds = "tiny", 2, 512, 3, "zero2_fp32.json"
    rank, local_rank, world = init_distributed()
    mark(f"distributed set up ({world} rank(s)); building the {args.preset} model on the CPU")
    torch.manual_seed(0)
    geo = AudioGeometry(8, 1024)
    tok = build_tiny_tokenizer()
    cfg = RunConfig()
    cfg.model.preset = args.preset
    cfg.whisper.enabled = args.whisper
    cfg.whisper.preset = "large-v3" if gpu else "tiny"
    model = build_model(cfg, tok, geo)
    mark(f"model built; deepspeed.initialize with {args.ds} (an offload config builds CPU Adam on first use)")
    ds = json.loads((REPO / "ds_configs" / args.ds).read_text())
    ds.update(train_micro_batch_size_per_gpu=args.micro_batch, gradient_accumulation_steps=1, gradient_clipping=1.0,
              train_batch_size=args.micro_batch * world)  # fmt: skip
    ds["optimizer"]["params"].update(lr=1e-4, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=ds)  # fmt: skip
    mark("engine ready")
    layout = LayoutBuilder(tok, geo, LayoutOptions(whisper=args.whisper))
    batch = synthetic_batch(layout, geo, args.micro_batch, args.tokens)
    device = engine.device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    tokens = int(batch["attention_mask"].sum())
    times = []
    for step in range(args.steps + 3):
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = engine(**batch)
        engine.backward(out.loss)
        engine.step()
        if gpu:
            torch.cuda.synchronize()
        if step >= 3:
            times.append(time.perf_counter() - start)
        mark(f"step {step + 1} of {args.steps + 3} (3 warm-up): {time.perf_counter() - start:.2f} s")
    step_time = statistics.median(times)
    flops = llm_flops_per_token(engine.module, batch["input_ids"].shape[1]) * tokens
    n_params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in engine.module.parameters()) / 1e9
    line = (f"preset {args.preset} ({n_params:.2f} B params), {args.ds}, micro-batch {args.micro_batch} x "
            f"{batch['input_ids'].shape[1]} tokens, device {torch.cuda.get_device_name(0) if gpu else 'cpu'}: "
            f"median step {step_time * 1000:.0f} ms, {tokens * world / step_time:,.0f} tokens/s")  # fmt: skip
    peak = peak_flops()
    if peak:
        line += f", MFU {flops / step_time / peak:.1%} (LLM FLOPs/token {flops / tokens / 1e9:.2f} G)"
    if gpu:
        line += f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    if rank == 0:
        print(line)


if __name__ == "__main__":
    main()
