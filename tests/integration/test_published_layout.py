"""docs/FINETUNE.md's commands on tiny folders of the published layout (tests/published_layout.py): the folder check,
then prepare -> doctor -> train -> export -> generate through the real CLI with a fine-tuning recipe."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from data_pipeline.codecs import tiny_higgs
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from ds_train.model.published import check_published_layout
from tests.helpers import CONFIGS, REPO, command_env, run_command
from tests.published_layout import make_published_layout_codec, make_published_layout_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("published_layout")
    return make_published_layout_model(root / "model"), make_published_layout_codec(root / "codec")


def _info(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ds_train", "info", *args]
    return subprocess.run(cmd, cwd=REPO, env=command_env(), capture_output=True, text=True, timeout=300)


def test_check_model_accepts_the_published_layout(folders) -> None:
    model, codec = folders
    proc = _info("--check-model", str(model), "--codec-path", str(codec))
    assert proc.returncode == 0, proc.stderr
    assert "this is the published layout (sizes differ, see below)" in proc.stdout
    assert "size   config.json: hidden_size is 64, published 3072" in proc.stdout
    assert "\n  layout " not in proc.stdout


def test_check_model_names_each_difference(folders, tmp_path: Path) -> None:
    model, _ = folders
    wrong = Path(shutil.copytree(model, tmp_path / "wrong"))
    config = json.loads((wrong / "config.json").read_text())
    config.update(audio_token_id=128015, codebook_size=1024)  # one token id and the stream BOS/EOS room
    (wrong / "config.json").write_text(json.dumps(config))
    proc = _info("--check-model", str(wrong))
    assert proc.returncode == 5, proc.stderr
    assert "NOT the published layout: 2 difference(s)" in proc.stdout
    assert "layout config.json: audio_token_id is 128015, published 128016" in proc.stdout
    assert "layout config.json: codebook_size is 1024, published 1026" in proc.stdout
    assert "differ from the published layout" in proc.stderr

    (wrong / "config.json").write_text(json.dumps({"model_type": "higgs_audio", "architectures": ["HiggsAudioModel"]}))
    report = check_published_layout(wrong, None).render()
    assert "format is 'boson-ai original (HiggsAudioModel)'" in report

    tiny_tok = tmp_path / "tok"  # the random-init presets' tokenizer: right names, other ids
    build_tiny_tokenizer().save_pretrained(str(tiny_tok))
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, tiny_tok / name)
    report = check_published_layout(tiny_tok, None).render()
    assert re.search(r"layout tokenizer: <\|AUDIO_OUT\|> is \d+, published 128016", report), report
    (tiny_tok / "model.safetensors").unlink()
    assert "layout weights: file is 'missing'" in check_published_layout(tiny_tok, None).render()


def test_check_codec_names_a_codebook_difference(tmp_path: Path) -> None:
    tiny_higgs(codebook_size=512).save_pretrained(str(tmp_path / "codec512"))
    report = check_published_layout(None, tmp_path / "codec512")
    assert not report.layout_ok and "layout codec: codebook_size is 512, published 1024" in report.render()
    original = tmp_path / "original_codec"  # boson-ai's own codec config (what the first release shipped)
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"n_filters": 32, "D": 256, "ratios": [8, 5, 4, 2, 3],
                                                      "sample_rate": 24000, "bins": 1024, "n_q": 8}))  # fmt: skip
    report = check_published_layout(None, original)
    assert "layout codec: model_type is 'missing', published 'higgs_audio_v2_tokenizer'" in report.render()


def test_finetune_guide_commands_on_a_published_layout_folder(folders, assets, tmp_path: Path) -> None:
    """The guide's sequence with the 1 x 24 GB LoRA recipe, pointed at the tiny folders (fp32: this CPU has no bf16;
    a manifest encoded at start-up stands in for the prepared set, `prepare` is tested in test_prepare.py)."""
    model, codec = folders
    py = sys.executable
    manifest = tmp_path / "manifest.jsonl"  # 8 of the corpus's rows, both speakers (paths relative to its folder)
    lines = assets.manifest.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row.update({k: str(assets.manifest.parent / row[k]) for k in ("audio", "ref_audio")})
    by_speaker = {s: [r for r in rows if r.get("speaker") == s] for s in {r.get("speaker") for r in rows}}
    manifest.write_text("".join(json.dumps(r) + "\n" for group in by_speaker.values() for r in group[:4]))
    recipe = CONFIGS / "finetune_1x24gb_lora.yaml"
    overrides = [
        f"model.path={model}", f"data.codec_path={codec}", "data.prepared=", "data.eval_prepared=",
        f"data.manifest={manifest}",
        f"train.deepspeed_config={CONFIGS / 'zero2_fp32.json'}", "data.max_tokens=2048", "data.num_workers=0",
        "train.gradient_accumulation_steps=1", "train.warmup_steps=1", "train.max_steps=2", "train.lr=1e-3",
    ]  # fmt: skip
    doctor = run_command([py, "-m", "ds_train", "doctor", "--config", str(recipe), *overrides])
    assert "all checks passed" in doctor.stdout
    run = tmp_path / "run"
    run_command([py, "-m", "ds_train", "train", "--config", str(recipe), *overrides, f"train.output_dir={run}"])
    exported = tmp_path / "exported"
    run_command([py, "-m", "ds_train", "export", "--checkpoint", str(run), "--out", str(exported)])
    # the export has the published layout too (LoRA merged back into the plain weights)
    assert check_published_layout(exported, None).layout_ok
    ref = Path(rows[0]["ref_audio"])
    out = tmp_path / "cloned.wav"
    run_command([py, "-m", "ds_train", "generate", "--checkpoint", str(run), "--ref-audio", str(ref),
                 "--ref-text", "Some words.", "--text", "Other words.", "--out", str(out),
                 "--max-seconds", "1"])  # fmt: skip
    wave, rate = sf.read(str(out))
    assert rate == 24000 and 0 < wave.shape[0] <= 24000 * 1.5
