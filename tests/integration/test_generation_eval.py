"""Free-running generation metrics (issue 13 §2): the measures themselves on known inputs, and a real evaluation pass
of a tiny trained model with a local (tiny, random-init) x-vector speaker model, and the offline default encoder."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import soundfile as sf
import torch

from data_pipeline.types import AudioGeometry
from ds_train.evaluation.generation_eval import GeneratedSample, GenerationEvaluator, silence_share, summarize
from ds_train.evaluation.intelligibility import Transcriber
from ds_train.evaluation.speaker_similarity import GE2EEncoder, SpeakerEncoder, speaker_encoder
from ds_train.inference.generate import stopped
from ds_train.trainer import Trainer
from tests.helpers import (
    CONFIGS,
    free_port,
    make_config,
    read_scalars,
    run_command,
    tiny_asr_model,
    tiny_speaker_model,
    train_args,
)


def test_silence_and_stop_measures() -> None:
    sr = 1000
    wave = torch.cat([torch.zeros(500), 0.5 * torch.sin(torch.arange(500.0))])
    assert silence_share(wave, sr) == 0.5
    assert silence_share(torch.zeros(0), sr) == 1.0
    geo = AudioGeometry(num_codebooks=2, codec_codebook_size=8)
    running = torch.tensor([[8, 8], [1, 8], [2, 3]])
    assert not stopped(running, geo)
    assert stopped(torch.cat([running, torch.tensor([[9, 4], [9, 9]])]), geo)
    values = summarize([GeneratedSample("a", True, 2.0, 1.0, 0.1), GeneratedSample("b", False, 1.0, 2.0, 0.3)])
    assert values["cloning/gen_stop_rate"] == 0.5 and values["cloning/gen_duration_ratio"] == 1.25
    assert math.isclose(values["cloning/gen_silence_share"], 0.2) and "cloning/gen_speaker_sim" not in values


def test_speaker_similarity_is_a_cosine(tmp_path: Path) -> None:
    encoder = SpeakerEncoder(tiny_speaker_model(tmp_path / "spk"))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16000, generator=g) * 0.1, torch.randn(24000, generator=g) * 0.1
    assert math.isclose(encoder.similarity(a, a, 16000), 1.0, abs_tol=1e-5)
    assert -1.0 <= encoder.similarity(a, b, 16000) <= 1.0
    assert math.isclose(encoder.similarity(a, b, 16000), encoder.similarity(b, a, 16000), abs_tol=1e-5)


def test_default_speaker_encoder_tells_voices_apart_offline(assets) -> None:
    """resemblyzer's GE2E encoder, whose weights ship in its package: one voice saying two sentences is more alike
    than two voices saying the same sentence (the demo's eSpeak voices)."""
    encoder = speaker_encoder(None)
    assert isinstance(encoder, GE2EEncoder) and encoder.name.startswith("resemblyzer 0.1.4 GE2E")
    rows = {r["id"]: r for r in map(json.loads, assets.manifest.read_text().splitlines())}

    def wave(sample_id: str) -> tuple[torch.Tensor, int]:
        pcm, rate = sf.read(assets.manifest.parent / rows[sample_id]["audio"], dtype="float32")
        return torch.from_numpy(pcm), rate

    (a0, sr), (a1, _), (b0, _) = wave("spk0_00"), wave("spk0_01"), wave("spk1_00")
    assert rows["spk0_00"]["text"] == rows["spk1_00"]["text"] != rows["spk0_01"]["text"]
    same_voice, same_text = encoder.similarity(a0, a1, sr), encoder.similarity(a0, b0, sr)
    assert same_voice > same_text + 0.1, (same_voice, same_text)
    assert math.isclose(encoder.similarity(a0, a0, sr), 1.0, abs_tol=1e-5)
    assert -1.0 <= encoder.similarity(a0, torch.zeros(100), sr) <= 1.0  # digital silence: a number, not NaN


def test_generation_metrics_on_a_real_model(assets, prepared_corpus: Path, tmp_path: Path) -> None:
    trainer = Trainer(make_config(assets, tmp_path / "run", f"data.prepared={prepared_corpus}", "train.max_steps=2",
                                  "train.tensorboard=false"))  # fmt: skip
    trainer.fit()
    llm_cfg = trainer.engine.module.llm.config
    evaluator = GenerationEvaluator(
        trainer.data.dataset, trainer.data.collator, trainer.data.codec, trainer.geometry, 2,
        trainer.samples.special.audio_out_bos, (llm_cfg.audio_token_id, llm_cfg.audio_delay_token_id),
        SpeakerEncoder(tiny_speaker_model(tmp_path / "spk")), asr=Transcriber(tiny_asr_model(tmp_path / "asr")),
    )  # fmt: skip
    values = evaluator.run(trainer.engine.module)
    assert values["cloning/gen_samples"] == 2.0 and values["cloning/gen_time_s"] > 0
    assert 0.0 <= values["cloning/gen_stop_rate"] <= 1.0 and 0.0 <= values["cloning/gen_silence_share"] <= 1.0
    assert 0.0 <= values["cloning/gen_duration_ratio"] <= 2.5
    assert -1.0 <= values["cloning/gen_speaker_sim_target"] <= 1.0
    assert math.isnan(values["cloning/gen_speaker_sim"]) or -1.0 <= values["cloning/gen_speaker_sim"] <= 1.0
    assert values["cloning/gen_wer"] >= 0 and values["cloning/gen_wer_target"] >= 0
    # every generated sample is kept with its reference and real target audio and what they say, for TensorBoard
    assert [g.sample_id for g in evaluator.generated] == [trainer.data.dataset.row_sizes(i).sample_id for i in (0, 1)]
    first = evaluator.generated[0]
    assert first.text == trainer.data.dataset.row_sizes(0).text and first.speaker == trainer.data.dataset.speakers[0]
    assert first.reference.numel() > 0 and first.target.numel() > 0 and first.measures.sample_id == first.sample_id
    assert trainer.engine.module.training  # evaluation leaves the model as it found it


def test_two_zero3_ranks_generate_in_step(assets, tmp_path: Path) -> None:
    """Under ZeRO-3 no rank holds every weight: both ranks of a real 2-rank run generate the subset in step (every
    weight partitioned: persistence threshold 0), rank 0 reports it, and the run ends without hanging."""
    ds = json.loads((CONFIGS / "zero2_fp32.json").read_text())
    ds["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 0}
    (tmp_path / "zero3_fp32.json").write_text(json.dumps(ds))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    run_command([
        torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "ds_train",
        *train_args(assets, tmp_path / "run"), f"train.deepspeed_config={tmp_path / 'zero3_fp32.json'}",
        "train.max_steps=2", "data.num_workers=0", f"data.eval_manifest={assets.manifest}", "train.eval_every=2",
        "monitor.generate_samples=3",
    ], timeout=900)  # fmt: skip
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    assert scalars["cloning/gen_samples"] == {2: 3.0}
    assert 0.0 <= scalars["cloning/gen_stop_rate"][2] <= 1.0
