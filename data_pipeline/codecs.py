"""One codec interface over the audio tokenizers: encode(waveform) -> codes [C, T], decode(codes) -> waveform.

Backends: `dac` (descript-audio-codec) and `higgs` (transformers' HiggsAudioV2TokenizerModel, the codec Higgs Audio v2
was trained with). Weights always come from local disk. `tiny_dac` / `tiny_higgs` build small random-init models with
the 24 kHz, 25 frames/s geometry for tests and the demo.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from data_pipeline.errors import InputError
from data_pipeline.ingest.audio import resample

if TYPE_CHECKING:
    from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel


class Codec(Protocol):
    device: torch.device
    sample_rate: int
    num_codebooks: int
    codebook_size: int
    frame_rate: float

    def encode(self, waves: list[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        """waves: list of [S_i] mono waveforms at `sample_rate` -> list of codes [C, T_i] (int64)."""
        ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [C, T] -> waveform [S] at `self.sample_rate`."""
        ...


@contextmanager
def decoding_convolutions() -> Iterator[None]:
    """Inside: CPU convolutions without oneDNN. oneDNN builds a kernel for every new input length, and decoded lengths
    rarely repeat (generated audio, logged samples): on this project's CPU a tiny DAC decode took 60-900 ms with oneDNN
    and 13-17 ms without, the tiny Higgs codec 70-94 vs 16-28 ms, the full-size 44.1 kHz DAC about the same either way
    (0.5 s for 1 s of audio). No effect on a GPU. (Only this flag: `torch.backends.mkldnn.flags` resets the others.)"""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


@contextmanager
def full_fp32_precision() -> Iterator[None]:
    """Plain fp32 (no TF32) convolutions and matmuls, deterministic cuDNN algorithms, inside the block.

    cuDNN runs fp32 convolutions in TF32 by default on Ampere and newer GPUs: inputs rounded to a 10-bit mantissa,
    enough to move some frames to another nearest codeword. Codes made on a GPU would then differ from CPU codes and
    from run to run. No effect on a CPU."""
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled, benchmark=False, deterministic=True, allow_tf32=False
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


class DacCodec:
    """descript-audio-codec backend.

    Batched encode pads every waveform to the batch's longest whole number of hops, and zeroes each encoder conv's
    output past each utterance's own length. The next conv then reads zeros there, exactly as it reads its zero padding
    when the utterance is encoded alone, so batched codes equal one-at-a-time codes (without the mask, a conv's bias
    and the Snake activations make the padding non-zero, and the last frames of a shorter utterance change).
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.sample_rate = int(model.sample_rate)
        self.num_codebooks = int(model.n_codebooks)
        self.codebook_size = int(model.codebook_size)
        self.hop_length = int(model.hop_length)
        self.frame_rate = self.sample_rate / self.hop_length
        self._encoder_convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv1d)]

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> DacCodec:
        """Load weights saved with `DAC.save(path)` (or the original DAC release file) from local disk."""
        import dac

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"DAC weights file {path} does not exist (weights are never downloaded)")
        return cls(dac.utils.load_model(load_path=str(path)), device)

    @torch.no_grad()
    def encode(self, waves: list[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        """waves: list of [S_i] mono waveforms at `sample_rate` -> list of codes [C, ceil(S_i' / hop)] (int64), where
        S_i' is the length at the codec's rate; an empty waveform gives one frame."""
        if not waves:
            return []
        waves = [resample(w.float(), sample_rate, self.sample_rate) for w in waves]
        frames = [max(1, -(-w.numel() // self.hop_length)) for w in waves]
        batch = torch.zeros(len(waves), 1, max(frames) * self.hop_length)
        for i, w in enumerate(waves):
            batch[i, 0, : w.numel()] = w
        batch = batch.to(self.device)
        hooks = []
        if len(set(frames)) > 1:
            frames_t = torch.tensor(frames, device=self.device)
            mask = partial(_zero_past_length, frames=frames_t, total_frames=max(frames))
            hooks = [conv.register_forward_hook(mask) for conv in self._encoder_convs]
        try:
            with full_fp32_precision():
                _, codes, *_ = self.model.encode(batch)
        finally:
            for hook in hooks:
                hook.remove()
        return [codes[i, :, :n].long().cpu() for i, n in enumerate(frames)]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        with decoding_convolutions():
            latents = self.model.quantizer.from_codes(codes.unsqueeze(0).to(self.device))[0]
            return self.model.decode(latents)[0, 0].float().cpu()


def _zero_past_length(
    conv: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor, frames: torch.Tensor, total_frames: int
) -> torch.Tensor:
    """Forward hook: out [B, D, T] of an encoder conv running at T / total_frames steps per codec frame -> out with
    row i zeroed from step frames[i] * T / total_frames on (a whole number: T is a multiple of total_frames)."""
    steps_per_frame = out.shape[-1] // total_frames
    valid = frames * steps_per_frame
    keep = torch.arange(out.shape[-1], device=out.device)[None, :] < valid[:, None]
    return out * keep[:, None, :].to(out.dtype)


def tiny_dac(seed: int = 0, num_codebooks: int = 4, codebook_size: int = 256) -> torch.nn.Module:
    """A ~0.3M-parameter random-init DAC at 24 kHz, hop 960 (25 frames/s, the Higgs codec's frame rate)."""
    import dac

    torch.manual_seed(seed)
    return dac.DAC(
        encoder_dim=8,
        encoder_rates=[4, 5, 6, 8],
        latent_dim=32,
        decoder_dim=32,
        decoder_rates=[8, 6, 5, 4],
        n_codebooks=num_codebooks,
        codebook_size=codebook_size,
        codebook_dim=8,
        sample_rate=24000,
    )


# The published tokenizer's acoustic (DAC) strides, in the order its encoder applies them: 8*5*4*2*3 = 960 samples per
# frame at 24 kHz = 25 frames/s. The decoder upsamples with the same list (not reversed), as the original code does.
HIGGS_RATIOS = (8, 5, 4, 2, 3)


def _higgs_hop_length(config: HiggsAudioV2TokenizerConfig) -> int:
    """Samples per frame at `config.sample_rate`; raises InputError if the acoustic and semantic branches disagree."""
    acoustic, semantic = config.acoustic_model_config, config.semantic_model_config
    hop = math.prod(acoustic.downsampling_ratios)
    if math.prod(acoustic.upsampling_ratios) != hop:
        raise InputError(
            f"higgs codec: decoder upsampling {list(acoustic.upsampling_ratios)} does not invert encoder downsampling "
            f"{list(acoustic.downsampling_ratios)} (hop {hop})"
        )
    if config.sample_rate % hop:
        raise InputError(
            f"higgs codec: frame rate {config.sample_rate}/{hop} = {config.sample_rate / hop:g} frames/s is not an "
            "integer; the acoustic downsampling ratios must divide the sample rate"
        )
    if hop * config.semantic_sample_rate % config.sample_rate:
        raise InputError(
            f"higgs codec: a {hop}-sample hop at {config.sample_rate} Hz is not a whole number of samples at the "
            f"semantic model's {config.semantic_sample_rate} Hz"
        )
    semantic_hop = hop * config.semantic_sample_rate // config.sample_rate
    # The semantic features are the semantic model's frames taken every `semantic_downsample_factor`-th one.
    semantic_stride = math.prod(getattr(semantic, "conv_stride", (config.downsample_factor,)))
    step = config.semantic_downsample_factor
    if step < 1 or semantic_stride * step != semantic_hop or math.prod(config.strides) != 1:
        raise InputError(
            f"higgs codec: semantic branch frame hop (model stride {semantic_stride} x step {step} x encoder strides "
            f"{list(config.strides)}) != acoustic hop {semantic_hop} samples at {config.semantic_sample_rate} Hz; "
            f"set downsample_factor={semantic_stride} and an acoustic hop that is a multiple of it"
        )
    return hop


class HiggsCodec:
    """Higgs Audio v2 tokenizer backend: 24 kHz mono -> 8 RVQ codebooks x 1024 at 25 frames/s (published model).

    Each waveform is encoded at its own length, so codes are exactly `model.encode`'s for any length: round(S / hop)
    frames (half up). Padding to whole frames would change them: at a length that is not a multiple of the hop the
    model re-encodes the acoustic branch with half-hop padding on both sides to match the semantic branch's frame
    count, and right-padding skips that path (9-40 % of codes per codebook differed, and +60 samples gained a mostly
    silent frame). Only a waveform too short for the model to encode at all (under ~5 ms, empty included) is
    zero-padded to one hop: one frame.

    Batched encode runs one forward per distinct length and never pads one utterance to another's length: HuBERT's
    GroupNorm over time and its unmasked self-attention let padding change every frame's semantic features, and the
    acoustic encoder's receptive field (~1 s) reaches far past the last frame. Batched codes therefore equal
    one-at-a-time codes; only utterances of exactly equal length share a forward.
    """

    def __init__(self, model: HiggsAudioV2TokenizerModel, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        # float32: RVQ picks nearest codewords, so reduced precision would change codes.
        self.model = model.to(device=self.device, dtype=torch.float32).eval()
        config = model.config
        self.hop_length = _higgs_hop_length(config)
        self.sample_rate = int(config.sample_rate)
        self.frame_rate = self.sample_rate / self.hop_length
        self.codebook_size = int(config.codebook_size)
        self.num_codebooks = self._probe_num_codebooks()

    def _probe_num_codebooks(self, frames: int = 3) -> int:
        """Encode `frames` hops of silence; the config checks above cannot see every kernel/padding combination."""
        silence = torch.zeros(1, 1, frames * self.hop_length, device=self.device)
        with torch.no_grad():
            acoustic_frames = self.model.acoustic_encoder(silence).shape[-1]
            try:
                codes = self.model.encode(silence, return_dict=False)
            except RuntimeError as err:
                raise InputError(f"higgs codec: a {frames}-frame input does not encode ({err})") from err
        if acoustic_frames != frames or codes.shape[-1] != frames:
            raise InputError(
                f"higgs codec: {frames} x {self.hop_length} samples give {acoustic_frames} acoustic and "
                f"{codes.shape[-1]} code frames, expected {frames}; the model's frame geometry is inconsistent"
            )
        return int(codes.shape[1])

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> HiggsCodec:
        """Load a `save_pretrained` directory (config.json + weights) from local disk; nothing is downloaded."""
        from transformers import HiggsAudioV2TokenizerModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"Higgs audio tokenizer directory {path} has no config.json (weights are never downloaded)"
            )
        model = HiggsAudioV2TokenizerModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        return cls(model, device)

    @torch.no_grad()
    def encode(self, waves: list[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        """waves: list of [S_i] mono waveforms at `sample_rate` -> list of codes [C, T_i] (int64), `model.encode`'s
        codes: T_i = round(S_i' / hop) half up, S_i' the length at 24 kHz; a waveform too short to encode gives one
        frame."""
        at_rate: list[torch.Tensor] = []
        for wave in waves:
            if wave.dim() != 1:
                raise ValueError(f"higgs codec: expected a mono waveform [S], got shape {tuple(wave.shape)}")
            at_rate.append(resample(wave.float(), sample_rate, self.sample_rate))
        by_length: dict[int, list[int]] = {}
        for i, wave in enumerate(at_rate):
            by_length.setdefault(wave.numel(), []).append(i)
        codes: list[torch.Tensor] = [torch.empty(0)] * len(waves)
        for length, members in by_length.items():
            out = self._encode_equal_length(torch.stack([at_rate[i] for i in members]), length)
            for row, i in enumerate(members):
                codes[i] = out[row].long().cpu()
        return codes

    def _encode_equal_length(self, batch: torch.Tensor, length: int) -> torch.Tensor:
        """batch [B, S] of one length S -> codes [B, C, T]. Below one hop the model's convolutions may not fit the
        input (it raises); such a batch is padded to one hop instead."""
        batch = batch.unsqueeze(1).to(self.device)
        with full_fp32_precision():
            if length >= self.hop_length:
                return self.model.encode(batch, return_dict=False)
            try:
                return self.model.encode(batch, return_dict=False) if length else self._encode_one_hop(batch)
            except RuntimeError:  # too short for the semantic model's convolution kernels
                return self._encode_one_hop(batch)

    def _encode_one_hop(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode(F.pad(batch, (0, self.hop_length - batch.shape[-1])), return_dict=False)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [C, T] -> waveform [T * hop] at 24 kHz."""
        if codes.dim() != 2 or codes.shape[0] != self.num_codebooks:
            raise ValueError(f"higgs codec: expected codes [{self.num_codebooks}, T], got {tuple(codes.shape)}")
        with decoding_convolutions():
            wave = self.model.decode(codes.unsqueeze(0).to(self.device), return_dict=False)
        return wave[0, 0].float().cpu()


def tiny_higgs_config(codebook_size: int = 1024) -> HiggsAudioV2TokenizerConfig:
    """A tiny Higgs tokenizer config with the published geometry: 24 kHz, hop 960 (8*5*4*2*3, 25 frames/s), a
    HuBERT-style semantic model at 16 kHz with stride 320 (50 frames/s, every 2nd frame kept) and 8 codebooks.

    The number of codebooks follows from the last target bandwidth: 2 kbps / (25 frames/s * 10 bits) = 8.
    """
    from transformers import HiggsAudioV2TokenizerConfig

    bits = math.ceil(math.log2(codebook_size))
    return HiggsAudioV2TokenizerConfig(
        sample_rate=24000,
        semantic_sample_rate=16000,
        downsample_factor=320,
        target_bandwidths=[0.5, 1, 1.5, 8 * 25 * bits / 1000],
        codebook_size=codebook_size,
        codebook_dim=64,
        acoustic_model_config={
            "encoder_hidden_size": 4,
            "downsampling_ratios": list(HIGGS_RATIOS),
            "upsampling_ratios": list(HIGGS_RATIOS),
            "decoder_hidden_size": 64,
            "hidden_size": 32,
            "sampling_rate": 24000,
        },
        semantic_model_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "conv_dim": [16] * 7,
            "conv_stride": [5, 2, 2, 2, 2, 2, 2],
            "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 2,
        },
    )


def tiny_higgs(seed: int = 0, codebook_size: int = 1024) -> HiggsAudioV2TokenizerModel:
    """A ~0.46M-parameter random-init HiggsAudioV2TokenizerModel with the published 24 kHz / 25 frames/s / 8-codebook
    geometry (see `tiny_higgs_config`)."""
    from transformers import HiggsAudioV2TokenizerModel

    torch.manual_seed(seed)
    model = HiggsAudioV2TokenizerModel(tiny_higgs_config(codebook_size))
    # Weight init zero-fills the RVQ codebooks (a real checkpoint overwrites them), which would map every frame to
    # code 0. Small random codewords make the nearest-codeword search follow the features' direction instead.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for vq in model.quantizer.quantizers:
            embed = vq.codebook.embed
            embed.copy_(torch.randn(embed.shape, generator=generator) * 0.01)
    return model.eval()


def load_codec(kind: str, path: str | Path, device: str | torch.device = "cpu") -> Codec:
    """Build the codec a run config names. `kind`: "dac" (a weights file) or "higgs" (a `save_pretrained` dir)."""
    if kind == "dac":
        return DacCodec.from_file(path, device)
    if kind == "higgs":
        return HiggsCodec.from_pretrained(path, device)
    raise ValueError(f"unknown codec {kind!r}; supported: 'dac', 'higgs'")
