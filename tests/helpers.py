"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ds_train.config import RunConfig, load_run_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "ds_configs"


@dataclass
class Assets:
    manifest: Path
    codec_file: Path


def make_config(assets: Assets, out_dir: Path, *overrides: str, ds: str = "zero2_fp32.json") -> RunConfig:
    """The demo's run config pointed at the test corpus, small and fast."""
    return load_run_config(
        CONFIGS / "demo.yaml",
        [
            f"data.manifest={assets.manifest}",
            f"data.codec_path={assets.codec_file}",
            f"train.output_dir={out_dir}",
            f"train.deepspeed_config={CONFIGS / ds}",
            "data.micro_batch_size=4",
            "data.num_workers=0",
            "train.log_every=1",
            *overrides,
        ],
    )
