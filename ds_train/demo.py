"""The built-in demo: a local multi-speaker corpus, a tiny random-init codec, and the `tiny` preset trained with
DeepSpeed ZeRO-2 bf16 (CPU, or GPU where one exists)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch.distributed as dist

from data_pipeline.codecs import tiny_dac
from data_pipeline.demo_corpus import EVAL_MANIFEST, make_demo_corpus
from ds_train.config import load_run_config
from ds_train.distributed import init_distributed, native_bf16
from ds_train.trainer import TrainResult, train

log = logging.getLogger("ds_train")
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "ds_configs" / "demo.yaml"


def run_demo(output_dir: str | Path, steps: int, overrides: list[str] | tuple[str, ...] = ()) -> TrainResult:
    out = Path(output_dir).resolve()
    rank, _, _ = init_distributed()
    codec_file = out / "codec" / "tiny_dac.pth"
    if rank == 0:
        log.info("demo: building the corpus in %s", out / "corpus")
        manifest = make_demo_corpus(out / "corpus", eval_speakers=1)
        if not codec_file.is_file():
            codec_file.parent.mkdir(parents=True, exist_ok=True)
            tiny_dac(seed=0).save(str(codec_file))
    dist.barrier()
    manifest = out / "corpus" / "manifest.jsonl"
    precision = []
    bf16_ok, why = native_bf16()
    if not bf16_ok:
        # Emulated bf16 would blow the demo's time budget; the bf16 engine path itself is covered by the tests.
        log.warning("demo: %s, so bf16 is emulated and slow here; training in fp32 (ZeRO-2) instead", why)
        precision = [f"train.deepspeed_config={DEMO_CONFIG.parent / 'zero2_fp32.json'}"]
    cfg = load_run_config(
        DEMO_CONFIG,
        [
            f"data.manifest={manifest}",
            f"data.eval_manifest={manifest.parent / EVAL_MANIFEST}",  # a voice the training set lacks
            f"data.codec_path={codec_file}",
            f"train.output_dir={out / 'run'}",
            f"train.max_steps={steps}",
            *precision,
            *overrides,
        ],
    )
    return train(cfg)
