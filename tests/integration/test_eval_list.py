"""`python -m ds_train evaluate` on a Seed-TTS-eval style list: every usable line is cloned and measured, every other
line is reported by number, the outputs are written, a re-run resumes instead of starting again, and batched,
one-at-a-time and 2-rank (deepspeed launcher) runs write the same audio."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import soundfile as sf

from ds_train.evaluation.eval_list import evaluate_list
from ds_train.trainer import Trainer
from tests.helpers import free_port, make_config, run_command, tiny_asr_model, tiny_speaker_model


def _write_list(assets, folder: Path) -> Path:
    wavs = sorted((assets.manifest.parent / "wavs").glob("*.wav"))
    rel = [os.path.relpath(w, folder) for w in wavs]
    lines = [
        f"u1|Some words here.|{rel[0]}|Other words now.|{rel[1]}",
        f"u2|A reference.|{rel[2]}|A new sentence.",
        "u3|missing wav|nowhere.wav|text",
        f"u4|Empty text.|{rel[3]}|",
        "u5|too|few",
        f"u1|Duplicate id.|{rel[4]}|Again.",
        f"u6|Third one.|{rel[5]}|Spoken in a cloned voice.|{rel[6]}",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.lst").write_text("\n".join(lines) + "\n")
    return folder / "meta.lst"


def test_evaluate_clones_measures_reports_bad_lines_and_resumes(assets, prepared_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(make_config(assets, run, f"data.prepared={prepared_corpus}", "train.max_steps=1",
                        "train.tensorboard=false")).fit()  # fmt: skip
    meta = _write_list(assets, tmp_path / "list")
    speaker, asr = tiny_speaker_model(tmp_path / "spk"), tiny_asr_model(tmp_path / "asr")
    out = tmp_path / "eval"
    proc = run_command([sys.executable, "-m", "ds_train", "evaluate", "--checkpoint", str(run), "--list", str(meta),
                        "--out", str(out), "--max-seconds", "1", "--speaker-model", str(speaker),
                        "--asr-model", str(asr), "--language", "en"])  # fmt: skip
    assert "| generated |" in proc.stdout and "| ground truth |" in proc.stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated"]["utterances"] == 3 and summary["ground_truth"]["utterances"] == 2
    assert summary["rejected_lines"] == 4
    gen = summary["generated"]
    assert 0 <= gen["stop_rate"] <= 1 and 0 <= gen["silence_share"] <= 1 and gen["rtf"] > 0
    assert -1 <= summary["ground_truth"]["speaker_sim"] <= 1
    assert gen["wer"] >= 0 and summary["ground_truth"]["wer"] >= 0  # a random ASR: the rate, not its value
    rejects = {json.loads(line)["line"]: json.loads(line)["reason"] for line in (out / "rejects.jsonl").open()}
    assert sorted(rejects) == [3, 4, 5, 6]
    assert "not found" in rejects[3] and "empty" in rejects[4] and "got 3" in rejects[5] and "duplicate" in rejects[6]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["utt"] for r in rows] == ["u1", "u2", "u6"] and rows[1]["gt_seconds"] == ""
    for utt in ("u1", "u2", "u6"):
        wave, rate = sf.read(str(out / "wavs" / f"{utt}.wav"))
        assert rate == 24000 and wave.shape[0] <= rate * 1.2

    # Resume: finished lines are kept as they are; a line whose result is missing is done again.
    kept = (out / "wavs" / "u1.wav").stat().st_mtime_ns
    (out / "items" / "u6.json").unlink()
    (out / "wavs" / "u6.wav").unlink()
    again = evaluate_list(run, meta, out, max_seconds=1.0)
    assert again["generated"]["utterances"] == 3 and (out / "wavs" / "u6.wav").is_file()
    assert (out / "wavs" / "u1.wav").stat().st_mtime_ns == kept

    # Batched (the CLI's 8 above) and one at a time give the same audio (greedy)...
    single = tmp_path / "eval_single"
    evaluate_list(run, meta, single, max_seconds=1.0, batch_size=1)
    for utt in ("u1", "u2", "u6"):
        assert (single / "wavs" / f"{utt}.wav").read_bytes() == (out / "wavs" / f"{utt}.wav").read_bytes(), utt

    # ...and so do 2 ranks under the deepspeed launcher, each cloning every other line; rank 0 writes the summary.
    launched = tmp_path / "eval_2ranks"
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    proc = run_command([deepspeed, "--num_gpus", "2", "--master_port", str(free_port()),
                        "--module", "ds_train", "evaluate", "--checkpoint", str(run), "--list", str(meta),
                        "--out", str(launched), "--max-seconds", "1", "--batch-size", "2"])  # fmt: skip
    assert "dist_world_size=2" in proc.stdout + proc.stderr
    assert json.loads((launched / "summary.json").read_text())["generated"]["utterances"] == 3
    for utt in ("u1", "u2", "u6"):
        assert (launched / "wavs" / f"{utt}.wav").read_bytes() == (out / "wavs" / f"{utt}.wav").read_bytes(), utt
