"""Tests for data_pipeline.demo.speech_synth: real espeak-ng formant speech via ctypes."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor

import espeakng_loader
import numpy as np
import pytest

from data_pipeline.demo import speech_synth
from data_pipeline.demo.speech_synth import MAX_DEMO_VOICES, Voice, demo_voices, espeak_available, synthesize

SENTENCE = "The quick brown fox jumps over the lazy dog."
LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog. Then it runs across the wide green field, "
    "past the old stone wall, and disappears into the forest before anyone can follow it."
)


def _rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))


def _median_f0(wave: np.ndarray, sr: int, fmin: float = 60.0, fmax: float = 400.0) -> float:
    """Median autocorrelation pitch (Hz) over the louder frames of a mono waveform, shape (n,)."""
    frame, hop = 1024, 512
    lo, hi = int(sr / fmax), int(sr / fmin)
    frames = [wave[i : i + frame] for i in range(0, len(wave) - frame, hop)]
    energies = np.array([_rms(f) for f in frames])
    f0s = []
    for f, energy in zip(frames, energies, strict=True):
        if energy < 0.3 * energies.max():
            continue  # unvoiced or silent frames give meaningless lags
        f = f - f.mean()
        ac = np.correlate(f, f, mode="full")[frame - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:  # keep clearly periodic frames only
            f0s.append(sr / lag)
    assert len(f0s) >= 5, "too few voiced frames to estimate pitch"
    return float(np.median(f0s))


def _stats_in_child(voice: Voice) -> tuple[int, int, float, bool]:
    wave, sr = synthesize(SENTENCE, voice)
    return len(wave), sr, _rms(wave), wave.dtype == np.float32


def test_espeak_available() -> None:
    assert espeak_available()


def test_sentence_basic_properties() -> None:
    wave, sr = synthesize(SENTENCE, Voice("en-us"))
    assert sr == 22050
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert np.all(np.isfinite(wave))
    assert np.abs(wave).max() <= 1.0
    assert 0.5 < len(wave) / sr < 5.0
    assert _rms(wave) > 0.02


def test_demo_voices_distinct_and_deterministic() -> None:
    voices = demo_voices(MAX_DEMO_VOICES)
    assert len(set(voices)) == MAX_DEMO_VOICES
    assert demo_voices(5) == voices[:5] == demo_voices(5)
    assert demo_voices(0) == []
    with pytest.raises(ValueError):
        demo_voices(MAX_DEMO_VOICES + 1)
    for voice in voices[:24]:  # every (variant, accent) pair must actually load
        wave, _ = synthesize("Hello.", voice)
        assert _rms(wave) > 0.01, voice


def test_demo_voices_sound_different() -> None:
    (male, female) = demo_voices(2)
    wave_m, sr = synthesize(SENTENCE, male)
    wave_f, _ = synthesize(SENTENCE, female)
    f0_m, f0_f = _median_f0(wave_m, sr), _median_f0(wave_f, sr)
    assert 70 < f0_m < 200 and 120 < f0_f < 350, (f0_m, f0_f)
    assert f0_f > 1.3 * f0_m, (f0_m, f0_f)


def test_pitch_parameter_moves_f0() -> None:
    low, sr = synthesize(SENTENCE, Voice("en-us", pitch=20))
    high, _ = synthesize(SENTENCE, Voice("en-us", pitch=80))
    assert _median_f0(high, sr) > 1.2 * _median_f0(low, sr)


def test_longer_text_and_slower_rate_give_longer_audio() -> None:
    short, _ = synthesize(SENTENCE, Voice("en-gb"))
    long, sr = synthesize(LONG_TEXT, Voice("en-gb"))
    assert len(long) > 2 * len(short)
    slow, _ = synthesize(SENTENCE, Voice("en-gb", rate=100))
    fast, _ = synthesize(SENTENCE, Voice("en-gb", rate=300))
    assert len(slow) > 1.8 * len(fast)


def test_no_leakage_between_calls() -> None:
    # An echo voice followed by the same text must start and end the same way: espeak's leftover
    # echo tail must not bleed into the next utterance.
    voice = Voice("en-us+f4", rate=400)
    first, sr = synthesize("Hello there.", voice)
    second, _ = synthesize("Hello there.", voice)
    assert abs(len(first) - len(second)) < 0.05 * sr
    pad = int(0.005 * sr)
    for wave in (first, second):
        assert np.abs(wave[:pad]).max() < 0.01 and np.abs(wave[-pad:]).max() < 0.01


@pytest.mark.parametrize(
    "name", ["xx-nonexistent", "en-us+nosuchvariant", "+f3"], ids=["language", "variant", "empty-base"]
)
def test_unknown_voice_raises_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="nonexistent|nosuchvariant|\\+f3"):
        synthesize(SENTENCE, Voice(name))


def test_invalid_inputs() -> None:
    for text in ("", "   \n"):
        with pytest.raises(ValueError):
            synthesize(text, Voice("en-us"))
    with pytest.raises(ValueError):
        Voice("en-us", rate=10)
    with pytest.raises(ValueError):
        Voice("en-us", pitch=101)
    with pytest.raises(ValueError):
        Voice("")


def test_missing_library_or_data_is_a_clear_runtime_error(tmp_path) -> None:
    # Engines are constructed directly so the process-wide one is untouched; both checks fail before
    # espeak_Initialize is reached.
    with pytest.raises(RuntimeError, match="data folder"):
        speech_synth._Engine(lib_path="/nonexistent/libespeak-ng.so", data_path=str(tmp_path))
    with pytest.raises(RuntimeError, match="shared library"):
        speech_synth._Engine(lib_path=str(tmp_path / "libespeak-ng.so"), data_path=espeakng_loader.get_data_path())


def test_concurrent_threads() -> None:
    voices = demo_voices(4)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda v: synthesize(SENTENCE, v), voices * 2))
    for wave, sr in results:
        assert sr == 22050 and _rms(wave) > 0.02


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_works_in_subprocess(method: str) -> None:
    if method not in mp.get_all_start_methods():
        pytest.skip(f"start method {method!r} unavailable on this platform")
    voice = demo_voices(3)[2]
    n_parent, sr_parent, _, _ = _stats_in_child(voice)  # also makes a fork child inherit an initialised engine
    with mp.get_context(method).Pool(1) as pool:
        n_child, sr_child, rms_child, is_f32 = pool.apply_async(_stats_in_child, (voice,)).get(timeout=60)
    assert sr_child == sr_parent == 22050 and is_f32
    assert rms_child > 0.02
    assert abs(n_child - n_parent) < 0.05 * sr_parent  # same text and voice -> same length up to noise
