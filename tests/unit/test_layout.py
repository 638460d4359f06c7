"""Token layout, delay pattern and label alignment at the data level."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import HiggsAudioV2Processor, WhisperFeatureExtractor

from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions, whisper_token_count
from data_pipeline.layout.delay_pattern import add_stream_markers_and_delay, revert_delay
from data_pipeline.layout.text_tokens import SpecialTokenIds, build_tiny_tokenizer
from data_pipeline.types import IGNORE_INDEX, AudioGeometry

GEO = AudioGeometry(num_codebooks=4, codec_codebook_size=256)


def _codes(steps: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, GEO.codec_codebook_size, (GEO.num_codebooks, steps), generator=torch.Generator().manual_seed(seed)
    )


def test_delay_pattern_matches_transformers_processor() -> None:
    codes = _codes(7)
    ours = add_stream_markers_and_delay(codes, GEO.stream_bos, GEO.stream_eos)  # [F, C]
    proc = SimpleNamespace(audio_stream_bos_id=GEO.stream_bos, audio_stream_eos_id=GEO.stream_eos)
    framed = torch.cat([torch.full((4, 1), GEO.stream_bos), codes, torch.full((4, 1), GEO.stream_eos)], dim=1)
    theirs = HiggsAudioV2Processor.build_delay_pattern(proc, framed.unsqueeze(0))[0].transpose(0, 1)
    assert torch.equal(ours, theirs)
    assert ours.shape == (7 + 2 + 3, 4)
    # codebook k is shifted right by k
    assert torch.equal(ours[1 + 2 : 1 + 2 + 7, 2], codes[2])


def test_revert_delay_round_trip() -> None:
    codes = _codes(11, seed=3)
    assert torch.equal(revert_delay(add_stream_markers_and_delay(codes, GEO.stream_bos, GEO.stream_eos)), codes)


def _builder(**opts) -> LayoutBuilder:
    return LayoutBuilder(build_tiny_tokenizer(), GEO, LayoutOptions(**opts))


@pytest.mark.parametrize("steps", [1, 9])
def test_each_codebook_labels_its_own_stream_eos_once(steps: int) -> None:
    """The delay pattern leaves codebook k with C - k EOS ids at the end of a span; only the first (its own EOS, right
    after its last code) is a label, as in the original Higgs Audio trainer. The fillers after it are unlabelled."""
    ref, tgt = _codes(5, 1), _codes(steps, 2)
    n_ref, num_codebooks = 5 + 2 + 3, GEO.num_codebooks
    ex = _builder().build("s1", "reference words", ref, "target words", tgt, ref_wave_16k=torch.randn(16000))
    frames, labels = ex.audio_frames[n_ref:], ex.audio_labels[n_ref:]
    for k in range(num_codebooks):
        assert (frames[:, k] == GEO.stream_eos).sum() == num_codebooks - k  # the input keeps every filler
        assert (labels[:, k] == GEO.stream_eos).nonzero().flatten().tolist() == [k + steps + 1]
        assert int((labels[:, k] != IGNORE_INDEX).sum()) == steps + 1
    # The span's last frame is all EOS in the input; only the last codebook's own EOS is a label there.
    assert (frames[-1] == GEO.stream_eos).all()
    assert labels[-1].tolist() == [IGNORE_INDEX] * (num_codebooks - 1) + [GEO.stream_eos]
    assert labels[steps + 1, 0] == GEO.stream_eos and (labels[steps + 1, 1:] != GEO.stream_eos).all()
    no_eos = _builder(label_stream_eos=False).build("s1", "reference words", ref, "target words", tgt,
                                                    ref_wave_16k=torch.randn(16000))  # fmt: skip
    assert not (no_eos.audio_labels == GEO.stream_eos).any()
    assert int((no_eos.audio_labels != IGNORE_INDEX).sum()) == num_codebooks * steps


def test_labels_are_aligned_with_inputs_not_shifted() -> None:
    builder = _builder()
    ref, tgt = _codes(5, 1), _codes(9, 2)
    ex = builder.build("s1", "reference words", ref, "target words", tgt, ref_wave_16k=torch.randn(16000))
    ids = builder.ids
    placeholders = (ex.input_ids == ids.audio_out) | (ex.input_ids == ids.audio_delay)
    assert int(placeholders.sum()) == ex.audio_frames.shape[0] == (5 + 5) + (9 + 5)
    # the label of a target frame is that very frame (the model's loss does the shift), BOS masked, each codebook's
    # own EOS kept (see test_each_codebook_labels_its_own_stream_eos_once)
    tgt_frames = ex.audio_frames[10:]
    tgt_labels = ex.audio_labels[10:]
    keep = tgt_labels != IGNORE_INDEX
    assert torch.equal(tgt_labels[keep], tgt_frames[keep])
    assert (tgt_frames[~keep] >= GEO.stream_bos).all()  # only stream markers are unlabelled
    assert int(keep.sum()) == 4 * (9 + 1)
    # the reference is context, never a target
    assert (ex.audio_labels[:10] == IGNORE_INDEX).all()
    # without the text head nothing textual is labelled
    assert (ex.labels == IGNORE_INDEX).all()


def test_prompt_order_and_audio_in_span() -> None:
    builder = _builder()
    ex = builder.build("s1", "ref", _codes(3), "tgt", _codes(4), ref_wave_16k=torch.randn(16000 * 2))
    ids: SpecialTokenIds = builder.ids
    seq = ex.input_ids.tolist()
    assert seq[0] == ids.begin_of_text
    n_in = seq.count(ids.audio_in)
    assert n_in == whisper_token_count(32000) == 50 == ex.whisper_tokens[0]
    first_in = seq.index(ids.audio_in)
    assert seq[first_in - 1] == ids.audio_in_bos and seq[first_in + n_in] == ids.audio_eos
    out_bos = [i for i, t in enumerate(seq) if t == ids.audio_out_bos]
    assert len(out_bos) == 2 and first_in < out_bos[0]  # reference waveform precedes the reference codes
    text = builder.tokenizer.decode(ex.input_ids)
    assert text.index("Generate audio following instruction.") < text.index("ref") < text.index("tgt")


def test_long_reference_is_chunked_for_whisper() -> None:
    ex = _builder().build("long", "r", _codes(3), "t", _codes(3), ref_wave_16k=torch.randn(16000 * 70))
    assert [c.numel() for c in ex.whisper_chunks] == [480000, 480000, 160000]
    assert ex.whisper_tokens == [750, 750, 250]


def test_text_labels_when_text_head_on_are_the_original_trainers() -> None:
    """The original Higgs Audio trainer labels, in the target assistant turn, <|audio_out_bos|>, <|audio_eos|> and the
    closing <|eot_id|> as text, never user text: the expected labels are built by hand from the token sequence."""
    builder = _builder(text_labels=True)
    ex = builder.build("s", "r", _codes(3), "hello there", _codes(5), ref_wave_16k=torch.randn(8000))
    ids = builder.ids
    seq = ex.input_ids.tolist()
    target_bos = max(i for i, t in enumerate(seq) if t == ids.audio_out_bos)
    target_eos = seq.index(ids.audio_eos, target_bos)
    assert target_eos == target_bos + 1 + (5 + 2 + GEO.num_codebooks - 1) and target_eos + 2 == len(seq)
    expected = [IGNORE_INDEX] * len(seq)
    for position in (target_bos, target_eos, len(seq) - 1):
        expected[position] = seq[position]
    assert ex.labels.tolist() == expected
    assert seq[-1] == ids.eot
    # the same tokens as without the text head, and no text label without it
    plain = _builder().build("s", "r", _codes(3), "hello there", _codes(5), ref_wave_16k=torch.randn(8000))
    assert plain.input_ids.tolist() == seq and (plain.labels == IGNORE_INDEX).all()


@pytest.mark.parametrize(
    "codes, reason",
    [
        (torch.full((4, 3), 256), "outside"),
        (torch.zeros(3, 5, dtype=torch.long), "expected"),
        (torch.zeros(4, 0), "empty"),
    ],
)
def test_bad_codes_are_rejected_with_reason(codes: torch.Tensor, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        _builder().build("bad", "r", codes, "t", _codes(3), ref_wave_16k=torch.randn(800))


def test_whisper_on_without_reference_waveform_raises() -> None:
    with pytest.raises(ValueError, match="reference waveform is empty"):
        _builder().build("noref", "r", _codes(3), "t", _codes(3), ref_wave_16k=torch.zeros(0))


@pytest.mark.parametrize("tokenizer", ["tiny", "published"])
def test_layout_matches_transformers_higgs_audio_processor(tokenizer: str) -> None:
    """Our token ids, audio ids and masks against HiggsAudioV2Processor on the same conversation (whisper off; the
    processor has no Whisper input), built offline from tiny parts: a random-init Higgs codec with the published
    geometry and either the presets' tokenizer or one with the published special-token ids (tests/published_layout.py,
    the layout docs/FINETUNE.md's check accepts)."""
    from transformers import DacFeatureExtractor

    from data_pipeline.codecs import HiggsCodec, tiny_higgs
    from tests.published_layout import published_layout_tokenizer

    codec_model = tiny_higgs(seed=0)
    codec = HiggsCodec(codec_model)
    tok = build_tiny_tokenizer() if tokenizer == "tiny" else published_layout_tokenizer()
    processor = HiggsAudioV2Processor(
        DacFeatureExtractor(sampling_rate=24000, hop_length=960), tok, codec_model,
        audio_stream_bos_id=codec.codebook_size, audio_stream_eos_id=codec.codebook_size + 1,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    ref, tgt = (0.1 * torch.randn(960 * n, generator=gen) for n in (40, 55))  # whole frames: no padding differences
    geo = AudioGeometry(codec.num_codebooks, codec.codebook_size)
    builder = LayoutBuilder(tok, geo, LayoutOptions(whisper=False))
    ref_codes, tgt_codes = codec.encode([ref, tgt], 24000)
    ours = builder.build("s", "the reference words", ref_codes, "and the target words", tgt_codes, scene="a quiet room")
    theirs = processor(
        text=builder.render_text("the reference words", "and the target words", scene="a quiet room"),
        audio=[ref.numpy(), tgt.numpy()], output_labels=True, return_tensors="pt", sampling_rate=24000,
    )  # fmt: skip
    assert torch.equal(theirs["input_ids"][0], ours.input_ids)
    if tokenizer == "published":  # the published ids are the ones laid out: <|audio_out_bos|>, <|AUDIO_OUT|>
        assert {128013, 128016} <= set(ours.input_ids.tolist())
    assert torch.equal(theirs["audio_input_ids"][0], ours.audio_frames)
    assert (
        theirs["audio_input_ids_mask"].all() and theirs["audio_input_ids_mask"].shape[1] == ours.audio_frames.shape[0]
    )
    # Labels: the processor labels every audio span and masks both stream markers; we label only the target and keep
    # each codebook's own stream EOS (the model must learn to stop). On the target span and away from EOS they agree.
    n_ref = ref_codes.shape[1] + 2 + geo.num_codebooks - 1
    their_tgt, our_tgt = theirs["audio_labels"][0][n_ref:], ours.audio_labels[n_ref:]
    not_eos = our_tgt != geo.stream_eos
    assert torch.equal(their_tgt[not_eos], our_tgt[not_eos])
    assert (their_tgt[~not_eos] == IGNORE_INDEX).all() and (ours.audio_labels[:n_ref] == IGNORE_INDEX).all()


def _original_audio_in_count(num_samples: int) -> int:
    """<|AUDIO|> embeddings boson-ai/higgs-audio places for one chunk: its Whisper feature extractor's attention mask
    (padding="max_length") summed, then its tower's `_get_feat_extract_output_lengths` (conv stride 2, then the
    kernel-2 stride-2 average pooling)."""
    extractor = WhisperFeatureExtractor(feature_size=128)
    mask = extractor([np.zeros(num_samples, np.float32)], sampling_rate=16000, return_attention_mask=True,
                     padding="max_length")["attention_mask"]  # fmt: skip
    conv = (int(mask.sum()) - 1) // 2 + 1
    return (conv - 2) // 2 + 1


@pytest.mark.parametrize("num_samples", [480000, 16000, 3997, 4000, 641, 960, 961, 1280, 12345, 479999, 321])
def test_whisper_token_count_matches_the_original_formula(num_samples: int) -> None:
    assert whisper_token_count(num_samples) == _original_audio_in_count(num_samples)


def test_whisper_token_count_keeps_one_position_for_a_tiny_tail_chunk() -> None:
    for n in (100, 320):  # the one documented difference
        assert _original_audio_in_count(n) == 0 and whisper_token_count(n) == 1


class _WithoutBackend:
    """The real tokenizer seen through its public calls only, as a slow (Python) tokenizer offers them."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name: str):
        if name == "backend_tokenizer":
            raise AttributeError(name)
        return getattr(self._tokenizer, name)


@pytest.mark.parametrize("whisper", [True, False])
def test_batched_token_counts_equal_one_at_a_time_and_the_built_examples(whisper: bool) -> None:
    builder = LayoutBuilder(build_tiny_tokenizer(), GEO, LayoutOptions(whisper=whisper))
    rows = [
        ("Hello there.", "Bonjour, ça va?", 30, 41, 16000 * 3, None),
        ("", "x", 9, 12, 16000, "Quiet room."),
        ("A long reference text, with commas; and more.", "  spaces  ", 120, 7, 16000 * 31, None),
        ("日本語のテキスト", "\n\nnewlines\n", 15, 15, 4000, "Street\nnoise"),
    ]
    counts = builder.token_counts(*(list(column) for column in zip(*rows, strict=True)), chunk=3)
    assert counts == [builder.token_count(*row) for row in rows]
    # a tokenizer without a Rust core to call directly (a slow one) counts through its own __call__
    slow = LayoutBuilder(_WithoutBackend(builder.tokenizer), GEO, LayoutOptions(whisper=whisper))
    assert slow.token_counts(*(list(column) for column in zip(*rows, strict=True)), chunk=3) == counts
    for (ref_text, text, rf, tf, rs, scene), count in zip(rows, counts, strict=True):
        codes = lambda n: torch.randint(0, GEO.codec_codebook_size, (GEO.num_codebooks, n))  # noqa: E731
        wave = torch.randn(rs) * 0.1 if whisper else None
        built = builder.build("id", ref_text, codes(rf), text, codes(tf), ref_wave_16k=wave, scene=scene)
        assert built.num_tokens == count
