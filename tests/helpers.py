"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.loading.collator import VoiceCloningCollator
from data_pipeline.loading.prepared_dataset import PreparedDataset
from data_pipeline.prepare.build_set import write_set_indexes
from data_pipeline.prepare.shards import DATASET_FILE
from data_pipeline.types import AudioGeometry
from ds_train.config import RunConfig, load_run_config
from ds_train.model.build import build_model

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "ds_configs"
GEO = AudioGeometry(num_codebooks=4, codec_codebook_size=256)  # the tiny DAC's geometry


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


REQUIRED_SCALARS = {"train/loss", "train/audio_loss", "train/grad_norm", "train/lr"}


def read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@dataclass
class LoggedAudio:
    step: int
    wav: bytes  # the encoded WAV file
    description: str  # the tag's description (its card's caption)


def read_audio(logdir: Path) -> dict[str, list[LoggedAudio]]:
    """TensorBoard audio (the audio plugin's tensor form) per tag, in step order."""
    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["tensors"] if acc.SummaryMetadata(t).plugin_data.plugin_name == "audio"]
    return {t: [LoggedAudio(e.step, e.tensor_proto.string_val[0], acc.SummaryMetadata(t).summary_description)
                for e in acc.Tensors(t)] for t in tags}  # fmt: skip


def read_text(logdir: Path) -> dict[str, dict[int, str]]:
    """TensorBoard text cards: tag (without /text_summary) -> step -> markdown."""
    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["tensors"] if t.endswith("/text_summary")]
    return {t.removesuffix("/text_summary"): {e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors(t)}
            for t in tags}  # fmt: skip


def command_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # each command sets up its own process group
    return env


def run_command(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=command_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def train_args(assets, out_dir: Path) -> list[str]:
    """`train` subcommand arguments for a short fp32 ZeRO-2 run on the test corpus."""
    return [
        "train", "--config", str(CONFIGS / "demo.yaml"), f"data.manifest={assets.manifest}",
        f"data.codec_path={assets.codec_file}", f"train.output_dir={out_dir}", "data.micro_batch_size=4",
        f"train.deepspeed_config={CONFIGS / 'zero2_fp32.json'}",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_model_and_batch(whisper: bool = True, trainable: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    cfg = RunConfig()
    cfg.whisper.enabled = whisper
    cfg.whisper.trainable = trainable
    from data_pipeline.layout.text_tokens import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    builder = LayoutBuilder(tok, GEO, LayoutOptions(whisper=whisper))
    g = torch.Generator().manual_seed(seed)
    exs = [
        builder.build(
            f"s{i}",
            "the reference",
            torch.randint(0, 256, (4, 6 + i), generator=g),
            "a target sentence",
            torch.randint(0, 256, (4, 10 - i), generator=g),
            ref_wave_16k=torch.randn(8000 + 4000 * i, generator=g),
        )
        for i in range(4)
    ]
    batch = VoiceCloningCollator(builder.ids.pad, GEO, whisper=whisper)(exs)
    return build_model(cfg, tok, GEO), batch, builder


def inject(trainer, change: Callable[[int, dict], dict]) -> None:
    """Route every collated batch through `change(index, batch)` before the engine sees it."""
    trainer.batches.add_tap(change)


def tiny_speaker_model(path: Path) -> Path:
    """A random-init WavLMForXVector with its feature extractor saved in `path` (a local speaker model)."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    config = WavLMConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32),
        conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        tdnn_dim=(32, 32), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1), xvector_output_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    WavLMForXVector(config).save_pretrained(str(path))
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(str(path))
    return path


def tiny_asr_model(path: Path) -> Path:
    """A random-init WhisperForConditionalGeneration with a byte-level tokenizer and its processor saved in `path`
    (a local ASR model: it transcribes nonsense, through the real transformers code)."""
    import json

    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )  # fmt: skip
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path.mkdir(parents=True, exist_ok=True)
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for special in ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>",
                    "<|notimestamps|>", "<|nocaptions|>", "<|startofprev|>", "<|startoflm|>"):  # fmt: skip
        vocab[special] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    end = "<|endoftext|>"
    tokenizer = WhisperTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), unk_token=end, bos_token=end,
                                 eos_token=end, pad_token=end)  # fmt: skip
    config = WhisperConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80, max_target_positions=64,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    generation = model.generation_config  # what a multilingual Whisper checkpoint's generation config carries
    generation.decoder_start_token_id = config.decoder_start_token_id
    generation.is_multilingual = True
    generation.lang_to_id = {"<|en|>": tokenizer.convert_tokens_to_ids("<|en|>")}
    generation.task_to_id = {t: tokenizer.convert_tokens_to_ids(f"<|{t}|>") for t in ("transcribe", "translate")}
    generation.no_timestamps_token_id = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    generation._from_model_config = False  # else loading rebuilds it from the model config, dropping the above
    model.save_pretrained(str(path))
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(str(path))
    return path


INDEX_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett"]


def index_only_set(root: Path, n: int) -> Path:
    """A prepared set's indexes for n examples of n utterances (no shards: only the indexes are read here)."""
    root.mkdir(parents=True)
    rng = random.Random(0)
    utterances = [
        {"uid": 3 * u + 7, "path": f"/corpus/u{u}.wav", "text": " ".join(rng.choices(INDEX_WORDS, k=12)),
         "speaker": f"s{u // 10}", "language": "en", "shard": u // 1000, "row": u % 1000, "frames": 100,
         "seconds": 4.0, "samples16k": 64000, "has_pcm": False}
        for u in range(n)
    ]  # fmt: skip
    examples = [
        {"id": f"row-{i:08d}", "line": i + 1, "speaker": f"s{i // 10}", "language": "en", "scene": None,
         "ref_text": utterances[(i + 1) % n]["text"], "text": utterances[i]["text"],
         "ref_uid": utterances[(i + 1) % n]["uid"], "target_uid": utterances[i]["uid"], "ref_frames": 100,
         "target_frames": 100, "ref_samples16k": 64000, "ref_seconds": 4.0, "target_seconds": 4.0}
        for i in range(n)
    ]  # fmt: skip
    write_set_indexes(root, examples, utterances, [])
    meta = {"format": 2, "num_codebooks": 4, "codebook_size": 256, "codec": "dac", "codec_path": "",
            "reference_pcm": "none"}  # fmt: skip
    (root / DATASET_FILE).write_text(json.dumps(meta))
    return root


def _private_dirty_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def _read_every_example(dataset: PreparedDataset, results) -> None:
    before = _private_dirty_kb()
    for i in range(len(dataset)):  # the index reads of building example i (its shards are not there to read)
        dataset.row_sizes(i)
        dataset._position(dataset.reference_uid(i, 0))
    results.put((_private_dirty_kb() - before) / 1024)


def growth_of_a_forked_reader(dataset: PreparedDataset) -> float:
    """MB of private memory a forked child gains while reading every example's index fields."""
    context = multiprocessing.get_context("fork")  # how DataLoader workers start on Linux
    results = context.Queue()
    child = context.Process(target=_read_every_example, args=(dataset, results))
    child.start()
    grown = results.get(timeout=120)
    child.join()
    return grown
