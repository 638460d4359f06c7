"""Free-running voice cloning with a trained model: reference audio + its transcript + new text -> speech.

    python -m ds_train generate --checkpoint runs/exp1 [--tag best] --ref-audio ref.wav --ref-text "..." \
        --text "..." --out cloned.wav [--max-seconds 20] [--temperature 0.7 --top-k 50 --seed 0]

`--checkpoint` is a training checkpoint or an exported folder (`python -m ds_train export`).

The prompt is the training layout cut at the target's `<|audio_out_bos|>`, so the model sees exactly what it was
trained on. transformers' HiggsAudioV2 generation (its delay-pattern logits processor) produces the audio frames; the
Whisper tower's embeddings replace the `<|AUDIO|>` positions as the prompt is embedded (chunked prefill is refused, see
`_refuse_chunked_prefill`). Several prompts generate as one batch (`generate_frames_batch`, `VoiceCloner.clone_batch`);
under ZeRO-3 every rank generates in step (`synced_ranks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from data_pipeline.errors import UsageError
from data_pipeline.layout.builder import LayoutBuilder
from data_pipeline.loading.collator import CHUNK_KEYS, VoiceCloningCollator
from data_pipeline.types import AudioGeometry
from ds_train.components.data import BatchPreparer
from ds_train.model.modeling import VoiceCloningModel
from ds_train.monitor.safe_decode import sanitize_codes


@dataclass
class Prompt:
    """One generation prompt; tensors are batched (batch of 1) and ready for the model."""

    batch: dict  # the collator's batch cut to the prompt: input_ids [1, L], audio_input_ids [1, F, C], Whisper inputs
    ref_frames: int  # F: delayed reference frames the prompt holds


def build_prompt(
    layout: LayoutBuilder,
    collator: VoiceCloningCollator,
    ref_text: str,
    ref_codes: torch.Tensor,
    text: str,
    ref_wave_16k: torch.Tensor | None = None,
    scene: str | None = None,
) -> Prompt:
    """ref_codes [C, T] codec codes of the reference; ref_wave_16k [S] its 16 kHz waveform (Whisper on)."""
    placeholder = torch.zeros(ref_codes.shape[0], 1, dtype=torch.long)  # a 1-step target, cut off below
    example = layout.build("prompt", ref_text, ref_codes, text, placeholder, ref_wave_16k=ref_wave_16k, scene=scene)
    ids = layout.ids
    return prompt_from_batch(collator([example]), 0, ids.audio_out_bos, (ids.audio_out, ids.audio_delay))


def prompt_from_batch(batch: dict, row: int, audio_out_bos: int, audio_placeholders: tuple[int, int]) -> Prompt:
    """One row of a collated training/eval batch cut right after its target's `<|audio_out_bos|>`: the prompt that
    row's target audio was the continuation of. `audio_placeholders`: the <|AUDIO_OUT|> and delay token ids."""
    ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
    bos = (ids == audio_out_bos).nonzero().flatten()
    end = int(bos[-1]) + 1  # keep the target's <|audio_out_bos|>: generation continues right after it
    ids = ids[:end]
    ref_frames = int(sum((ids == token).sum() for token in audio_placeholders))
    cut = {
        "input_ids": ids[None], "attention_mask": torch.ones_like(ids)[None],
        "audio_input_ids": batch["audio_input_ids"][row : row + 1, :ref_frames],
        "audio_input_ids_mask": batch["audio_input_ids_mask"][row : row + 1, :ref_frames],
    }  # fmt: skip
    if "whisper_chunk_sample" in batch:
        chunks = batch["whisper_chunk_sample"] == row
        for key in CHUNK_KEYS:
            if key in batch:
                cut[key] = batch[key][chunks.to(batch[key].device)]
        cut["whisper_chunk_sample"] = torch.zeros(int(chunks.sum()), dtype=torch.long)
    return Prompt(cut, ref_frames)


def stack_prompts(prompts: list[Prompt], pad_token_id: int) -> Prompt:
    """Prompts of one row each -> one prompt of B rows, as transformers' HiggsAudioV2 generates a batch: the text ids
    left-padded, so every row ends at its `<|audio_out_bos|>` and the new frames of all rows line up, and the reference
    frames right-padded to the longest (mask False), since its cache bookkeeping counts a row's frames from the left.
    Whisper chunks keep row order. `ref_frames` of the result is the padded count F: generated frames start there.
    -> input_ids [B, L], attention_mask [B, L], audio_input_ids [B, F, C], audio_input_ids_mask [B, F]."""
    if len(prompts) == 1:
        return prompts[0]
    rows = [p.batch for p in prompts]
    length = max(r["input_ids"].shape[1] for r in rows)
    frames = max(p.ref_frames for p in prompts)
    codebooks = rows[0]["audio_input_ids"].shape[2]
    batch = {
        "input_ids": torch.full((len(rows), length), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(rows), length, dtype=torch.long),
        "audio_input_ids": torch.zeros(len(rows), frames, codebooks, dtype=torch.long),
        "audio_input_ids_mask": torch.zeros(len(rows), frames, dtype=torch.bool),
    }
    for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        n = row["input_ids"].shape[1]
        batch["input_ids"][i, length - n :] = row["input_ids"][0]
        batch["attention_mask"][i, length - n :] = row["attention_mask"][0]
        batch["audio_input_ids"][i, : prompt.ref_frames] = row["audio_input_ids"][0]
        batch["audio_input_ids_mask"][i, : prompt.ref_frames] = row["audio_input_ids_mask"][0]
    if "whisper_chunk_sample" in rows[0]:
        for key in (k for k in CHUNK_KEYS if k in rows[0]):
            parts = [r[key] for r in rows]
            if parts[0].dim() == 2:  # waveforms [N, S]: zero-padded to the longest chunk of the batch
                width = max(t.shape[1] for t in parts)
                parts = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in parts]
            batch[key] = torch.cat(parts)
        batch["whisper_chunk_sample"] = torch.cat(
            [torch.full_like(r["whisper_chunk_sample"], i) for i, r in enumerate(rows)]
        )
    return Prompt(batch, frames)


def frame_budget(seconds: float, frame_rate: float, geometry: AudioGeometry) -> int:
    """Generated frames allowed for `seconds` of audio: the codec frames plus the delay pattern's tail and the BOS."""
    return int(seconds * frame_rate) + geometry.num_codebooks + 1


def stopped(frames: torch.Tensor, geometry: AudioGeometry) -> bool:
    """Generated delayed frames [F, C] -> whether an all-EOS frame (the end of every codebook's stream) occurs."""
    return bool((frames == geometry.stream_eos).all(-1).any())


def frames_to_codes(frames: torch.Tensor, geometry: AudioGeometry) -> torch.Tensor:
    """Generated delayed frames [F, C] (starting with the all-BOS frame) -> codec codes [C, T], cut at the first
    all-EOS frame; ids outside the codebook (a stray BOS/EOS) become 0."""
    num_codebooks = geometry.num_codebooks
    starts = (frames == geometry.stream_bos).all(-1).nonzero().flatten()
    first = int(starts[0]) + 1 if starts.numel() else 0
    ends = (frames[first:] == geometry.stream_eos).all(-1).nonzero().flatten()
    inner = frames[first : first + int(ends[0])] if ends.numel() else frames[first:]
    steps = inner.shape[0] - num_codebooks + 1
    if steps <= 0:
        return torch.zeros(num_codebooks, 0, dtype=torch.long)
    codes = torch.stack([inner[k : k + steps, k] for k in range(num_codebooks)])
    return sanitize_codes(codes, geometry.codec_codebook_size)[0]


def generate_codes(
    model: VoiceCloningModel,
    prompt: Prompt,
    geometry: AudioGeometry,
    max_frames: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int | None = None,
) -> torch.Tensor:
    """-> codec codes [C, T] of the cloned speech. temperature 0 is greedy; otherwise sampled (top_k 0 = no cut)."""
    return frames_to_codes(generate_frames(model, prompt, max_frames, temperature, top_k, seed), geometry)


def sampling_options(temperature: float, top_k: int) -> dict:
    """transformers `generate` options: greedy at temperature 0, else sampling (top_k 0 = no cut)."""
    if temperature < 0 or top_k < 0:
        raise UsageError(f"--temperature and --top-k must be >= 0, got {temperature} and {top_k}")
    if temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": top_k or None}


def _refuse_chunked_prefill(prefill_chunk_size: int | None) -> None:
    """Our Whisper injection places each chunk's own <|AUDIO|> embeddings (VoiceCloningModel._inject_audio_in), but
    transformers 5.x HiggsAudioV2 cannot prefill audio codes in chunks: its `prepare_inputs_for_generation` counts the
    cached <|AUDIO_OUT|> positions in the chunk's ids instead of the prompt's, so a chunk gets the wrong reference
    frames (different codes even without Whisper) or fails with "Number of elements of source < number of ones in
    mask". Generating from a wrong prompt silently would be worse than not offering the option."""
    if prefill_chunk_size is not None:
        raise ValueError(
            f"prefill_chunk_size={prefill_chunk_size}: chunked prefill is not supported for Higgs Audio v2 prompts "
            "(transformers' HiggsAudioV2 misplaces the reference audio codes across chunks); leave it unset"
        )


def generate_frames(
    model: VoiceCloningModel,
    prompt: Prompt,
    max_frames: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int | None = None,
    prefill_chunk_size: int | None = None,
) -> torch.Tensor:
    """-> the generated delayed frames [F, C] (all-BOS frame first), as the model produced them. `seed` seeds the
    sampling (same seed, same frames). `prefill_chunk_size` is refused: see `_refuse_chunked_prefill`."""
    _refuse_chunked_prefill(prefill_chunk_size)
    return _generate(model, prompt, max_frames, temperature, top_k, seed)[0]


def generate_frames_batch(
    model: VoiceCloningModel,
    prompts: list[Prompt],
    max_frames: int,
    pad_token_id: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int | None = None,
    synced_ranks: bool = False,
) -> list[torch.Tensor]:
    """Several prompts generated together -> each one's delayed frames [F, C] (all-BOS frame first). Greedy frames
    equal those of `generate_frames` one prompt at a time (tested); a row that has ended keeps emitting all-EOS frames
    until the last row ends or `max_frames`, which `frames_to_codes` and `stopped` read as its end. `synced_ranks`:
    every rank is generating (ZeRO-3 gathers weights in each forward), and each keeps stepping until all are done."""
    prompt = stack_prompts(prompts, pad_token_id)
    return list(_generate(model, prompt, max_frames, temperature, top_k, seed, synced_ranks).unbind(0))


@torch.no_grad()
def _generate(
    model: VoiceCloningModel, prompt: Prompt, max_frames: int, temperature: float, top_k: int, seed: int | None,
    synced_ranks: bool = False,
) -> torch.Tensor:  # fmt: skip
    """A prompt of B rows -> generated delayed frames [B, F, C]."""
    batch = BatchPreparer(next(model.parameters()).device)(prompt.batch)
    model.eval()
    model.arm_audio_in(
        model.audio_in_embeddings(
            batch["input_ids"], batch.get("whisper_input_features"), batch.get("whisper_token_counts")
        )
    )
    if seed is not None:  # transformers samples with torch.multinomial on the global generator
        torch.manual_seed(seed)
    try:
        out = model.llm.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            audio_input_ids=batch["audio_input_ids"], audio_input_ids_mask=batch["audio_input_ids_mask"],
            max_new_tokens=max_frames, return_dict_in_generate=True, synced_gpus=synced_ranks,
            **sampling_options(temperature, top_k),
        )  # fmt: skip
    finally:
        model.arm_audio_in(None)
    return out.audio_sequences[:, prompt.ref_frames :].cpu()


@dataclass(frozen=True)
class CloneRequest:
    """One voice to clone: the reference waveform [S] at `ref_rate`, its transcript, and the text to speak."""

    ref_wave: torch.Tensor
    ref_rate: int
    ref_text: str
    text: str


class VoiceCloner:
    """A checkpoint (or an exported folder) loaded once, with its codec, layout and collator, to clone many references
    (one process)."""

    def __init__(self, checkpoint: str | Path, which: str = "latest", device: torch.device | str | None = None) -> None:
        from ds_train.components.data import build_collator, build_layout
        from ds_train.components.exported import load_for_inference
        from ds_train.model.build import build_codec

        model, tokenizer, cfg, _ = load_for_inference(checkpoint, which)
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device)
        self.codec = build_codec(cfg, self.device)
        self.geometry = AudioGeometry(self.codec.num_codebooks, self.codec.codebook_size)
        self.layout = build_layout(cfg, tokenizer, self.geometry)
        self.collator = build_collator(cfg, tokenizer, self.geometry)

    def clone(
        self, ref_wave: torch.Tensor, ref_rate: int, ref_text: str, text: str, max_seconds: float = 20.0,
        temperature: float = 0.0, top_k: int = 0, seed: int | None = 0,
    ) -> tuple[torch.Tensor, bool]:  # fmt: skip
        """Reference waveform [S] at `ref_rate` -> (cloned speech [S'] at the codec's rate, whether generation ended
        with the stream EOS before `max_seconds`)."""
        return self.clone_batch([CloneRequest(ref_wave, ref_rate, ref_text, text)], max_seconds, temperature, top_k,
                                seed)[0]  # fmt: skip

    def clone_batch(
        self, requests: list[CloneRequest], max_seconds: float = 20.0, temperature: float = 0.0, top_k: int = 0,
        seed: int | None = 0,
    ) -> list[tuple[torch.Tensor, bool]]:  # fmt: skip
        """Several clones generated as one batch -> per request (speech [S'] at the codec's rate, stopped). Greedy
        results equal those of `clone` one at a time."""
        from data_pipeline.ingest.audio import resample
        from data_pipeline.layout.whisper_features import WHISPER_SAMPLE_RATE

        prompts = []
        for r in requests:
            (ref_codes,) = self.codec.encode([r.ref_wave], r.ref_rate)
            ref_16k = resample(r.ref_wave, r.ref_rate, WHISPER_SAMPLE_RATE)
            prompts.append(build_prompt(self.layout, self.collator, r.ref_text, ref_codes, r.text, ref_16k))
        max_frames = frame_budget(max_seconds, self.codec.frame_rate, self.geometry)
        frames = generate_frames_batch(
            self.model, prompts, max_frames, self.collator.pad_token_id, temperature, top_k, seed
        )
        results = []
        for row in frames:
            codes = frames_to_codes(row, self.geometry)
            wave = self.codec.decode(codes).clamp(-1, 1).cpu() if codes.shape[1] else torch.zeros(0)
            results.append((wave, stopped(row, self.geometry)))
        return results


@dataclass(frozen=True)
class CloneResult:
    """What `generate` wrote: the wav, its duration, and whether the model ended the audio itself (the stream EOS)
    or was cut at `max_seconds`."""

    path: Path
    seconds: float
    stopped: bool
    max_seconds: float

    def summary(self) -> str:
        how = ("the model ended it (audio EOS)" if self.stopped else
               f"cut at --max-seconds {self.max_seconds:g}: the model did not emit the audio EOS")  # fmt: skip
        return f"wrote {self.path}: {self.seconds:.2f} s of audio; {how}"


def clone_voice(
    checkpoint: str | Path,
    ref_audio: str | Path,
    ref_text: str,
    text: str,
    out: str | Path,
    which: str = "latest",
    max_seconds: float = 20.0,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
) -> CloneResult:
    """Load a checkpoint (or an exported folder) and its codec, clone the reference voice speaking `text`, write a
    wav -> what was written."""
    import soundfile as sf

    from data_pipeline.ingest.audio import load_mono

    cloner = VoiceCloner(checkpoint, which)
    wave, rate = load_mono(Path(ref_audio))
    cloned, ended = cloner.clone(wave, rate, ref_text, text, max_seconds, temperature, top_k, seed)
    if cloned.numel() == 0:
        raise RuntimeError("the model generated no complete audio frame; train longer or raise --max-seconds")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), cloned.numpy(), cloner.codec.sample_rate)
    return CloneResult(out, cloned.numel() / cloner.codec.sample_rate, ended, max_seconds)
