"""MobileNetV3: strict loading of the official mn04 checkpoint, shapes, and sensible tags on real clips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amr.audio.frontend import MelFrontEnd, load_audio
from amr.audio.mobilenet import TIME_STRIDE, MobileNetV3, audioset_class_names, embed_dim_for, make_divisible, output_frames
from amr.audio.weights import EFFICIENTAT_AUDIO

MEL = EFFICIENTAT_AUDIO.mel
U = 2.0**-24  # float32 unit roundoff


@pytest.fixture(scope="module")
def front_end() -> MelFrontEnd:
    return MelFrontEnd(MEL)


def _top_tags(model: MobileNetV3, front_end: MelFrontEnd, path: Path, k: int = 3) -> list[str]:
    waveform = torch.from_numpy(load_audio(path, MEL.sample_rate, EFFICIENTAT_AUDIO.window_seconds))[None]
    with torch.inference_mode():
        _, logits = model(front_end(waveform))
    names = audioset_class_names()
    return [names[i] for i in logits[0].topk(k).indices]


def test_make_divisible_follows_torchvision() -> None:
    assert make_divisible(16 * 0.4) == 8
    assert make_divisible(1280 * 0.4) == 512
    assert make_divisible(160 * 4.0) == 640
    assert make_divisible(11) == 16  # 8 would be more than 10 % below 11
    assert make_divisible(3) == 8


def test_mn04_checkpoint_loads_every_tensor(mn04_model: MobileNetV3, mn04_weights: Path) -> None:
    state = torch.load(mn04_weights, map_location="cpu", weights_only=True)
    assert len(state) == 312
    assert set(mn04_model.state_dict()) == set(state)
    assert sum(p.numel() for p in mn04_model.parameters()) == 983_599
    assert mn04_model.embed_dim == 384
    assert mn04_model.num_classes == 527
    assert not mn04_model.training


def test_widths_give_the_published_sizes() -> None:
    mn40 = MobileNetV3(4.0)
    assert mn40.embed_dim == embed_dim_for(4.0) == 3840
    assert embed_dim_for(0.4) == 384 and embed_dim_for(1.0) == 960
    assert mn40.classifier[2].weight.shape == (5120, 3840)
    assert mn40.classifier[5].weight.shape == (527, 5120)
    names = set(mn40.state_dict())
    assert "features.4.block.2.conc_se_layers.0.fc1.weight" in names
    assert "features.16.0.weight" in names


def test_frames_and_logits_agree_with_the_global_pool(mn04_model: MobileNetV3) -> None:
    mel = torch.randn(2, 1, 128, 250, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        frames, logits = mn04_model(mel)
        features = mn04_model.features(mel)  # (2, 384, F, T')
        pooled_over_map = mn04_model.classifier[0](features).flatten(1)  # EfficientAT's global average pool
        assert torch.equal(mn04_model.head(frames.mean(dim=1)), logits)
    assert frames.shape == (2, output_frames(250), 384)
    # the same F * T' values per channel averaged in two stages instead of one: float32 sums of
    # n terms are exact to n U max|x|, for both orders together (F + T' + 2) U max|x|
    _, _, f, t = features.shape
    bound = (f + t + 2) * U * float(features.abs().max())
    torch.testing.assert_close(frames.mean(dim=1), pooled_over_map, rtol=0, atol=bound)


@pytest.mark.parametrize("seconds", [0.01, 0.1, 1.0, 10.0])
def test_short_and_long_inputs_give_frames(mn04_model: MobileNetV3, front_end: MelFrontEnd, seconds: float) -> None:
    n = round(seconds * 32000)
    with torch.inference_mode():
        mel = front_end(torch.zeros(1, n))
        frames, logits = mn04_model(mel)
    assert mel.shape[-1] == MEL.frames(n)
    assert frames.shape[1] == output_frames(MEL.frames(n)) >= 1
    assert torch.isfinite(logits).all()


def test_output_frames_counts_the_strides(mn04_model: MobileNetV3) -> None:
    with torch.inference_mode():
        for t in (1, 2, 31, 32, 33, 1000, 1001):
            frames, _ = mn04_model(torch.zeros(1, 1, 128, t))
            assert frames.shape[1] == output_frames(t) == -(-t // TIME_STRIDE)
    assert output_frames(1000) == 32 and TIME_STRIDE == 32


def test_class_names() -> None:
    names = audioset_class_names()
    assert len(names) == len(set(names)) == 527
    assert names[0] == "Speech"
    assert names[74:76] == ["Dog", "Bark"]
    assert names[289:292] == ["Rain", "Raindrop", "Rain on surface"]
    assert names[526] == "Field recording"


def test_dog_clip_is_tagged_dog(mn04_model: MobileNetV3, front_end: MelFrontEnd, shared: Path) -> None:
    top = _top_tags(mn04_model, front_end, shared / "data/sounds/audio/bigsoundbank-dog.mp3")
    assert {"Dog", "Bark"} & set(top), top


@pytest.mark.parametrize("clip", ["freesound-rain.wav", "esc50-3-132852-A-10.wav"])
def test_rain_clips_are_tagged_rain(mn04_model: MobileNetV3, front_end: MelFrontEnd, shared: Path, clip: str) -> None:
    top = _top_tags(mn04_model, front_end, shared / "data/sounds/audio" / clip)
    assert {"Rain", "Raindrop", "Rain on surface"} & set(top), top
