"""Peak memory of one forward+backward: our loss (audio logits only where audio labels exist, text logits only where
text labels exist) against transformers' HiggsAudioV2 loss path (full [B, L, C*K] audio logits and, with the text
head, full [B, L, vocab] text logits), on the same batch. Each variant runs in its own subprocess; the figure is the
growth of peak RSS (CPU) or peak allocated memory (GPU) over the state before the forward.

    python -m benchmarks.memory [--batch 4] [--ref-seconds 10] [--target-seconds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _peak_bytes() -> float:
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    import torch

    from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
    from data_pipeline.layout.text_tokens import build_tiny_tokenizer
    from data_pipeline.loading.collator import VoiceCloningCollator
    from data_pipeline.types import AudioGeometry
    from ds_train.config import RunConfig
    from ds_train.model.build import build_model
    from ds_train.model.presets import LLM_PRESETS

    LLM_PRESETS["bench"] = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
                                vocab_size=128256)  # fmt: skip
    torch.manual_seed(0)
    geo = AudioGeometry(8, 1024)  # the published codec
    tok = build_tiny_tokenizer()
    cfg = RunConfig()
    cfg.model.preset, cfg.model.text_head, cfg.whisper.enabled = "bench", True, False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(cfg, tok, geo).to(device)
    layout = LayoutBuilder(tok, geo, LayoutOptions(whisper=False, text_labels=True))
    text = "the quick brown fox jumps over the lazy dog " * 6
    exs = [
        layout.build(f"s{i}", text, torch.randint(0, 1024, (8, int(args.ref_seconds * 25))), text,
                     torch.randint(0, 1024, (8, int(args.target_seconds * 25))))
        for i in range(args.batch)
    ]  # fmt: skip
    batch = VoiceCloningCollator(layout.ids.pad, geo, whisper=False)(exs)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = _peak_bytes()
    if variant == "ours":
        loss = model(**batch).loss
    else:
        out = model.llm(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            audio_input_ids=batch["audio_input_ids"], audio_input_ids_mask=batch["audio_input_ids_mask"],
            audio_labels=batch["audio_labels"], labels=batch["labels"],
        )  # fmt: skip
        loss = out.loss
    loss.backward()
    return {"variant": variant, "loss": float(loss), "peak_growth_mib": (_peak_bytes() - before) / 2**20,
            "shape": list(batch["input_ids"].shape), "device": device}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--ref-seconds", type=float, default=10)
    parser.add_argument("--target-seconds", type=float, default=15)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    results = {}
    for variant in ("transformers_full_logits", "ours"):
        # A fresh process per variant, so each peak is its own; run as a module from the repository root so the
        # project imports without being installed.
        cmd = [sys.executable, "-m", "benchmarks.memory", "--variant", variant, "--batch", str(args.batch),
               "--ref-seconds", str(args.ref_seconds), "--target-seconds", str(args.target_seconds)]  # fmt: skip
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent
        )
        out = proc.stdout.strip().splitlines()[-1]
        results[variant] = json.loads(out)
    full, ours = results["transformers_full_logits"], results["ours"]
    print(f"batch {full['shape']} tokens, 8 codebooks x 1026, text vocab 128256, text head on, {full['device']}")
    print(f"peak memory growth for forward+backward: transformers' loss path {full['peak_growth_mib']:.0f} MiB, "
          f"ours {ours['peak_growth_mib']:.0f} MiB ({full['peak_growth_mib'] / ours['peak_growth_mib']:.1f}x less); "
          f"losses {full['loss']:.4f} vs {ours['loss']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
