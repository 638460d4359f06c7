"""A small multi-speaker voice-cloning corpus made locally, with no download.

Speech comes from eSpeak NG voices (formant synthesis, shipped in the `espeakng-loader` wheel). If that library cannot
load, clearly synthetic "voices" (a pitched pulse train through speaker-specific formant filters) stand in, and the
manifest says so in its `scene` field.
"""

from __future__ import annotations

import json
import logging
import random
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things.",
    "A rainbow is a division of white light into many beautiful colors.",
    "She sells sea shells by the sea shore.",
    "We will meet at the station at half past seven.",
    "The weather today is bright, cold and windy.",
    "Reading books in the morning is a quiet pleasure.",
    "Turn left at the second corner and walk straight on.",
    "Numbers like four, eight and fifteen are easy to say.",
    "The old clock on the wall stopped at midnight.",
    "Fresh bread smells wonderful when it comes out of the oven.",
    "Can you hear the birds singing outside the window?",
)


def _synthetic_voice(text: str, speaker: int, sample_rate: int = 22050) -> np.ndarray:
    """A deterministic buzzy vowel stream: f0 and formants depend on the speaker, syllables on the text."""
    rng = np.random.default_rng(zlib.crc32(f"{speaker}:{text}".encode()))
    f0 = 90.0 + 45.0 * speaker
    formants = [(700 + 60 * speaker, 1200 + 150 * speaker), (400 + 40 * speaker, 2000 + 100 * speaker)]
    syllables = max(3, len(text) // 4)
    samples_per_syl = int(0.16 * sample_rate)
    t = np.arange(samples_per_syl) / sample_rate
    out = []
    for i in range(syllables):
        f1, f2 = formants[int(rng.integers(0, len(formants)))]
        pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * i / syllables))
        phase = 2 * np.pi * pitch * t
        source = sum(np.sin(k * phase) / k for k in range(1, 12))
        tone = source * (0.6 * np.sin(2 * np.pi * f1 * t) + 0.4 * np.sin(2 * np.pi * f2 * t))
        out.append(tone * np.hanning(samples_per_syl))
    wave = np.concatenate(out)
    return (0.3 * wave / (np.abs(wave).max() + 1e-9)).astype(np.float32)


EVAL_MANIFEST = "eval_manifest.jsonl"


def _line_count(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.is_file() else -1


def make_demo_corpus(out_dir: str | Path, num_speakers: int = 4, seed: int = 0, eval_speakers: int = 0) -> Path:
    """Write wavs and a voice-cloning manifest.jsonl under out_dir (reused if present) -> manifest path.

    Every speaker says the same sentences, each paired with the same reference sentence: the reference audio is the
    only thing that tells a target's voice (what the conditioning gain measures).

    With `eval_speakers` > 0, that many further speakers go to eval_manifest.jsonl instead: a held-out set of voices
    the training set never contains (zero-shot cloning)."""
    out_dir = Path(out_dir)
    manifest, eval_manifest = out_dir / "manifest.jsonl", out_dir / EVAL_MANIFEST
    per_speaker = len(SENTENCES)
    if _line_count(manifest) == num_speakers * per_speaker and (
        eval_speakers == 0 or _line_count(eval_manifest) == eval_speakers * per_speaker
    ):
        return manifest
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
    try:
        from data_pipeline.demo import speech_synth

        use_espeak = speech_synth.espeak_available()
    except ImportError:
        use_espeak = False
    if not use_espeak:
        log.warning("eSpeak NG is unavailable: the demo corpus uses clearly synthetic voices instead of speech")
    total = num_speakers + eval_speakers
    voices = speech_synth.demo_voices(total) if use_espeak else []
    utterances: dict[int, list[tuple[str, str]]] = {}
    for spk in range(total):
        for idx, text in enumerate(SENTENCES):
            if use_espeak:
                wave, sr = speech_synth.synthesize(text, voices[spk])
            else:
                wave, sr = _synthetic_voice(text, spk), 22050
            rel = f"wavs/spk{spk}_{idx:02d}.wav"
            sf.write(str(out_dir / rel), wave, sr, subtype="PCM_16")
            utterances.setdefault(spk, []).append((rel, text))
    # One sentence pairing for every speaker: target sentence idx always has reference sentence ref_of[idx], so the
    # texts (target and reference transcript) never tell the voice and only the reference audio does.
    rng = random.Random(seed)
    ref_of = [rng.choice([j for j in range(per_speaker) if j != idx]) for idx in range(per_speaker)]
    rows = []
    for spk, items in utterances.items():
        for idx, (rel, text) in enumerate(items):
            ref_idx = ref_of[idx]  # same speaker, another sentence
            rows.append(
                {
                    "id": f"spk{spk}_{idx:02d}",
                    "ref_audio": items[ref_idx][0],
                    "ref_text": items[ref_idx][1],
                    "audio": rel,
                    "text": text,
                    "speaker": f"spk{spk}",
                    "scene": None if use_espeak else "synthetic voice (eSpeak NG unavailable)",
                }
            )
    split = num_speakers * per_speaker
    for path, part in ((manifest, rows[:split]), (eval_manifest, rows[split:])):
        if part:
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in part))
            tmp.replace(path)
    return manifest
