"""Free-running generation: the prompt is the training layout's prefix, frames map back to codes, greedy generation
agrees with the teacher-forced forward on the frames it produced, and the `generate` command writes a wav."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from data_pipeline.layout.delay_pattern import add_stream_markers_and_delay
from data_pipeline.loading.collator import VoiceCloningCollator
from ds_train.inference.generate import build_prompt, frames_to_codes, generate_frames, generate_frames_batch, stopped
from tests.helpers import GEO, tiny_model_and_batch


def _prompt_parts(whisper: bool):
    model, _, builder = tiny_model_and_batch(whisper=whisper)
    collator = VoiceCloningCollator(builder.ids.pad, GEO, whisper=whisper)
    g = torch.Generator().manual_seed(5)
    ref_codes, ref_wave = torch.randint(0, 256, (4, 9), generator=g), torch.randn(12000, generator=g)
    return model, builder, collator, ref_codes, ref_wave


def test_prompt_is_the_training_layout_up_to_the_target_audio() -> None:
    _, builder, collator, ref_codes, ref_wave = _prompt_parts(whisper=True)
    target = torch.randint(0, 256, (4, 7))
    full = collator([builder.build("x", "the reference", ref_codes, "new words", target, ref_wave_16k=ref_wave)])
    prompt = build_prompt(builder, collator, "the reference", ref_codes, "new words", ref_wave)
    ids = prompt.batch["input_ids"][0]
    assert ids[-1] == builder.ids.audio_out_bos and (ids == builder.ids.audio_out_bos).sum() == 2
    assert torch.equal(ids, full["input_ids"][0, : ids.numel()])
    assert torch.equal(prompt.batch["audio_input_ids"][0], add_stream_markers_and_delay(ref_codes, 256, 257))
    assert torch.equal(prompt.batch["whisper_input_features"], full["whisper_input_features"])
    assert "labels" not in prompt.batch and "audio_labels" not in prompt.batch


def test_frames_to_codes_inverts_the_delay_pattern() -> None:
    codes = torch.randint(0, 256, (4, 11))
    frames = add_stream_markers_and_delay(codes, GEO.stream_bos, GEO.stream_eos)
    assert torch.equal(frames_to_codes(frames, GEO), codes)
    # Cut after frame 10 (no EOS tail): steps 0-6 are complete; steps 7-10 miss their higher codebooks.
    assert torch.equal(frames_to_codes(frames[:11], GEO), codes[:, :7])
    assert frames_to_codes(frames[:3], GEO).shape == (4, 0)
    stray = frames.clone()
    stray[5, 0] = GEO.stream_bos  # a marker inside the stream is not a code: it becomes 0
    assert frames_to_codes(stray, GEO)[0, 4] == 0


@pytest.mark.parametrize("whisper", [True, False])
def test_greedy_generation_agrees_with_the_teacher_forced_forward(whisper: bool) -> None:
    """Feed the generated codes back as a training target: at every frame that holds a code, the forward's argmax
    (which sees the same prompt, Whisper embeddings included) must be the frame that greedy generation chose."""
    model, builder, collator, ref_codes, ref_wave = _prompt_parts(whisper)
    prompt = build_prompt(builder, collator, "the reference", ref_codes, "new words", ref_wave)
    raw = generate_frames(model, prompt, max_frames=30)
    assert torch.equal(raw, generate_frames(model, prompt, max_frames=30))  # greedy is deterministic
    assert (raw[0] == GEO.stream_bos).all()  # the delay pattern opens with an all-BOS frame
    codes = frames_to_codes(raw, GEO)
    assert codes.shape[0] == 4 and codes.shape[1] >= 3 and int(codes.max()) < 256
    example = builder.build("x", "the reference", ref_codes, "new words", codes, ref_wave_16k=ref_wave)
    with torch.no_grad():
        out = model(**collator([example]))
    # The teacher-forced input equals the generated frames up to the first stray marker the model emitted (which
    # frames_to_codes turned into code 0); predictions up to there see the same context.
    frames = add_stream_markers_and_delay(codes, GEO.stream_bos, GEO.stream_eos)
    n = min(raw.shape[0], frames.shape[0])
    differs = (raw[:n] != frames[:n]).any(-1).nonzero().flatten()
    same_until = int(differs[0]) if differs.numel() else n - 1
    assert same_until >= 4
    predicted = out.predicted_codes[:same_until]  # row r predicts target frame r + 1 (frame 0 is never labelled)
    target = raw[1 : same_until + 1]
    real = target < GEO.codec_codebook_size  # frames the delay pattern did not force to BOS/EOS
    assert real.sum() >= 4 and torch.equal(predicted[real], target[real])


@pytest.mark.parametrize("whisper", [True, False])
def test_batched_greedy_generation_equals_one_prompt_at_a_time(whisper: bool) -> None:
    """Prompts of different text lengths, reference lengths and Whisper chunk counts, generated as one batch (text
    left-padded, reference frames right-padded): every row's frames equal those of the prompt generated alone, up to
    where that one stopped; a row that stopped early keeps emitting all-EOS frames."""
    model, builder, collator, _, _ = _prompt_parts(whisper)
    g = torch.Generator().manual_seed(11)
    prompts = []
    shapes = [(9, 12000, "new words"), (5, 7000, "a longer sentence of new words"), (14, 40000, "hi")]
    for i, (ref_steps, ref_samples, text) in enumerate(shapes):
        ref_codes, ref_wave = torch.randint(0, 256, (4, ref_steps), generator=g), torch.randn(ref_samples, generator=g)
        prompts.append(build_prompt(builder, collator, "the reference" + " again" * i, ref_codes, text, ref_wave))
    lengths = {p.batch["input_ids"].shape[1] for p in prompts}
    assert len(lengths) == 3
    batched = generate_frames_batch(model, prompts, 25, builder.ids.pad)
    for prompt, frames in zip(prompts, batched, strict=True):
        alone = generate_frames(model, prompt, max_frames=25)
        assert torch.equal(frames[: alone.shape[0]], alone)
        assert stopped(frames, GEO) == stopped(alone, GEO)
        assert torch.equal(frames_to_codes(frames, GEO), frames_to_codes(alone, GEO))


def test_a_model_fit_to_one_sample_generates_it_and_stops() -> None:
    """Only each codebook's own stream EOS is labelled (not the delay pattern's fillers): that is enough for generation
    to stop. Overfit one sample, then greedy generation reproduces its codes and ends with the all-EOS frame well
    before the frame limit."""
    model, builder, collator, ref_codes, ref_wave = _prompt_parts(whisper=False)
    target = torch.randint(0, 256, (4, 6), generator=torch.Generator().manual_seed(7))
    batch = collator([builder.build("x", "the reference", ref_codes, "new words", target)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    prompt = build_prompt(builder, collator, "the reference", ref_codes, "new words")
    raw = generate_frames(model, prompt, max_frames=40)
    assert torch.equal(frames_to_codes(raw, GEO), target)
    assert raw.shape[0] < 40 and (raw[-1] == GEO.stream_eos).all()


def test_seeded_sampling_is_reproducible() -> None:
    model, builder, collator, ref_codes, ref_wave = _prompt_parts(whisper=True)
    prompt = build_prompt(builder, collator, "the reference", ref_codes, "new words", ref_wave)

    def sample(seed: int) -> torch.Tensor:
        return generate_frames(model, prompt, max_frames=20, temperature=0.7, top_k=50, seed=seed)

    first = sample(0)
    assert torch.equal(first, sample(0))
    assert not torch.equal(first, sample(1))
    assert not torch.equal(first, generate_frames(model, prompt, max_frames=20))  # not greedy


@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_whisper_injection_follows_the_prompt_in_chunks(chunk: int) -> None:
    """A prompt embedded chunk by chunk through the KV cache (what `prefill_chunk_size` does) must see the same Whisper
    embeddings at the same positions as a prompt embedded at once: each chunk gets its own <|AUDIO|> embeddings (a
    one-shot injection would put them all into the first chunk that has any)."""
    from transformers import DynamicCache

    from data_pipeline.layout.whisper_features import WhisperLogMel, attach_features

    model, builder, collator, ref_codes, ref_wave = _prompt_parts(whisper=True)
    batch = build_prompt(builder, collator, "the reference", ref_codes, "new words", ref_wave).batch
    batch = attach_features(batch, WhisperLogMel())
    ids, frames = batch["input_ids"], batch["audio_input_ids"]
    audio_in = (ids[0] == builder.ids.audio_in).nonzero().flatten()
    assert int(audio_in[-1]) // chunk > int(audio_in[0]) // chunk  # the <|AUDIO|> span straddles chunks
    placeholder = (ids == model.config.audio_token_id) | (ids == model.config.audio_delay_token_id)
    embeds = model.audio_in_embeddings(ids, batch["whisper_input_features"], batch["whisper_token_counts"])
    with torch.no_grad():
        model.arm_audio_in(embeds)
        whole = model.llm.model(input_ids=ids, attention_mask=batch["attention_mask"], audio_input_ids=frames,
                                audio_input_ids_mask=batch["audio_input_ids_mask"], use_cache=False)  # fmt: skip
        whole = whole.last_hidden_state
        model.arm_audio_in(embeds)
        cache, parts = DynamicCache(config=model.config), []
        for start in range(0, ids.shape[1], chunk):
            end = start + chunk
            first, count = int(placeholder[0, :start].sum()), int(placeholder[0, start:end].sum())
            parts.append(model.llm.model(
                input_ids=ids[:, start:end], attention_mask=batch["attention_mask"][:, :end],
                audio_input_ids=frames[:, first : first + count] if count else None, cache=cache, use_cache=True,
            ).last_hidden_state)  # fmt: skip
        model.arm_audio_in(None)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-4, atol=1e-5)


def test_chunked_prefill_is_refused_clearly() -> None:
    model, builder, collator, ref_codes, ref_wave = _prompt_parts(whisper=True)
    prompt = build_prompt(builder, collator, "the reference", ref_codes, "new words", ref_wave)
    with pytest.raises(ValueError, match="prefill_chunk_size=8: chunked prefill is not supported"):
        generate_frames(model, prompt, max_frames=5, prefill_chunk_size=8)


def test_generate_command_writes_a_wav(assets, tmp_path: Path) -> None:
    from tests.helpers import run_command, train_args

    run_command([sys.executable, "-m", "ds_train", *train_args(assets, tmp_path / "run"), "train.max_steps=2"])
    ref = sorted((assets.manifest.parent / "wavs").glob("*.wav"))[0]
    out = tmp_path / "cloned.wav"
    proc = run_command([sys.executable, "-m", "ds_train", "generate", "--checkpoint", str(tmp_path / "run"),
                 "--ref-audio", str(ref), "--ref-text", "Some words.", "--text", "Other words.", "--out", str(out),
                 "--max-seconds", "1", "--temperature", "0.7", "--top-k", "50", "--seed", "3"])  # fmt: skip
    wave, rate = sf.read(str(out))
    assert rate == 24000 and 0 < wave.shape[0] <= 24000 * 1.5 and f"wrote {out}" in proc.stdout
