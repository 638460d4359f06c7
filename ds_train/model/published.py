"""The published Higgs Audio v2 layout (`bosonai/higgs-audio-v2-generation-3B-base` in transformers format, its
tokenizer, and the `bosonai/higgs-audio-v2-tokenizer` codec), and a key-by-key comparison of local folders with it.

`python -m ds_train info --check-model DIR [--codec-path DIR]` prints the comparison before a long job. Layout keys
(token ids, codebooks, model type) must match for this trainer to treat a folder as the published model; size keys
(widths, layer counts) are reported but may differ (a shrunk copy of the layout is what the tests train).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.layout import text_tokens as tt

PUBLISHED_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"
PUBLISHED_CODEC = "bosonai/higgs-audio-v2-tokenizer"

# config.json values that fix how tokens and codes are laid out (HiggsAudioV2Config key names).
LAYOUT_KEYS: dict[str, object] = {
    "model_type": "higgs_audio_v2",
    "vocab_size": 128256,
    "num_codebooks": 8,
    "codebook_size": 1026,  # 1024 codes + the stream BOS/EOS ids inside each codebook's range
    "audio_stream_bos_id": 1024,
    "audio_stream_eos_id": 1025,
    "audio_token_id": 128016,
    "audio_bos_token_id": 128013,
    "audio_delay_token_id": 128014,
    "pad_token_id": 128001,
}
# config.json values of the published size (Llama-3.2-3B backbone with dual-FFN audio layers).
SIZE_KEYS: dict[str, object] = {
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "head_dim": 128,
}
# The published tokenizer's ids of the tokens the layout uses (Llama-3 reserved ids renamed by Higgs Audio).
SPECIAL_TOKEN_IDS: dict[str, int] = {
    tt.BEGIN_OF_TEXT: 128000,
    tt.END_OF_TEXT: 128001,
    tt.START_HEADER: 128006,
    tt.END_HEADER: 128007,
    tt.EOT: 128009,
    tt.AUDIO_IN_BOS: 128011,
    tt.AUDIO_EOS: 128012,
    tt.AUDIO_OUT_BOS: 128013,
    tt.AUDIO_DELAY: 128014,
    tt.AUDIO_IN: 128015,
    tt.AUDIO_OUT: 128016,
    tt.SCENE_START: 128018,
    tt.SCENE_END: 128019,
}
# The codec: 24 kHz mono in, 8 codebooks of 1024 codes at 25 frames/s (hop 960 samples).
CODEC_GEOMETRY: dict[str, object] = {
    "sample_rate": 24000,
    "hop_length": 960,
    "frame_rate": 25.0,
    "codebook_size": 1024,
    "num_codebooks": 8,
}
CODEC_MODEL_TYPE = "higgs_audio_v2_tokenizer"  # transformers' HiggsAudioV2TokenizerModel
ORIGINAL_MODEL_TYPE = "higgs_audio"  # boson-ai's own format: convert it first (docs/FINETUNE.md)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class Finding:
    """One compared key: where it lives, what the folder has and what the published release has."""

    where: str  # "config.json", "tokenizer", "codec", "weights"
    key: str
    have: object
    published: object
    layout: bool  # True: must match; False: a size difference (reported, allowed)

    def render(self) -> str:
        kind = "layout" if self.layout else "size"
        return f"  {kind:<6} {self.where}: {self.key} is {self.have!r}, published {self.published!r}"


@dataclass(frozen=True)
class LayoutReport:
    findings: tuple[Finding, ...]
    checked: tuple[str, ...]  # what was read, for the report's first line

    @property
    def layout_ok(self) -> bool:
        return not any(f.layout for f in self.findings)

    def render(self) -> str:
        lines = [f"checked: {', '.join(self.checked)}"]
        sizes = [f for f in self.findings if not f.layout]
        layout = [f for f in self.findings if f.layout]
        if self.layout_ok:
            lines.append("this is the published layout" + (" (sizes differ, see below)" if sizes else " and size"))
        else:
            lines.append(f"NOT the published layout: {len(layout)} difference(s)")
        lines += [f.render() for f in layout + sizes]
        return "\n".join(lines)


def _compare(where: str, have: dict, published: dict, layout: bool) -> list[Finding]:
    missing = object()
    found = []
    for key, value in published.items():
        got = have.get(key, missing)
        if got is missing:
            found.append(Finding(where, key, "missing", value, layout))
        elif got != value:
            found.append(Finding(where, key, got, value, layout))
    return found


def check_model_folder(folder: str | Path) -> list[Finding]:
    """Compare a model folder's config.json, weights files and tokenizer with the published release."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a model folder (see docs/FINETUNE.md)")
    config = json.loads(config_file.read_text())
    if config.get("model_type") == ORIGINAL_MODEL_TYPE:
        return [Finding("config.json", "model_type", ORIGINAL_MODEL_TYPE, LAYOUT_KEYS["model_type"], True)] + [
            Finding("config.json", "format", "boson-ai original (HiggsAudioModel)", "transformers HiggsAudioV2", True)
        ]
    found = _compare("config.json", config, LAYOUT_KEYS, True) + _compare("config.json", config, SIZE_KEYS, False)
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        found.append(Finding("weights", "file", "missing", " or ".join(WEIGHT_FILES), True))
    found += check_tokenizer(folder)
    return found


def check_tokenizer(folder: str | Path) -> list[Finding]:
    """The tokenizer's ids of the special tokens the layout uses, by name."""
    vocab = tt.load_tokenizer(folder).get_vocab()
    have = {name: vocab.get(name, "missing") for name in SPECIAL_TOKEN_IDS}
    return _compare("tokenizer", have, SPECIAL_TOKEN_IDS, True)


def check_codec_folder(folder: str | Path) -> list[Finding]:
    """Load the Higgs codec from `folder` (offline) and compare its geometry with the published codec's."""
    from data_pipeline.codecs import HiggsCodec

    config_file = Path(folder) / "config.json"
    if config_file.is_file():
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type != CODEC_MODEL_TYPE:  # boson-ai's own codec config (n_filters, ratios, bins, n_q) has none
            return [Finding("codec", "model_type", model_type or "missing", CODEC_MODEL_TYPE, True)]
    codec = HiggsCodec.from_pretrained(folder)
    have = {
        "sample_rate": codec.sample_rate,
        "hop_length": codec.hop_length,
        "frame_rate": codec.frame_rate,
        "codebook_size": codec.codebook_size,
        "num_codebooks": codec.num_codebooks,
    }
    return _compare("codec", have, CODEC_GEOMETRY, True)


def check_published_layout(model_dir: str | Path | None, codec_dir: str | Path | None) -> LayoutReport:
    if model_dir is None and codec_dir is None:
        raise ValueError("give a model folder, a codec folder or both")
    findings: list[Finding] = []
    checked = []
    if model_dir is not None:
        findings += check_model_folder(model_dir)
        checked.append(f"model {model_dir}")
    if codec_dir is not None:
        findings += check_codec_folder(codec_dir)
        checked.append(f"codec {codec_dir}")
    return LayoutReport(tuple(findings), tuple(checked))
