"""Quality metrics on synthetic videos whose answers are known."""

import math

import numpy as np
import pytest
import torch

from miga_fast.models.tiny.world import COLOURS, OBJECT_RADIUS, SQUARE_HALF_SIDE, parse_prompt, render
from miga_fast.quality.metrics import (
    HFImageFeatures,
    all_metrics,
    background_consistency,
    colour_histogram,
    count_components,
    motion_smoothness,
    segment_object,
    subject_consistency,
    temporal_flickering,
    world_metrics,
)

PROMPT = "a red circle moving left on a striped blue background"


def uint8(video: torch.Tensor) -> np.ndarray:
    """world.render output [F, 3, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    return ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_static_video_is_perfect():
    frame = uint8(render(parse_prompt(PROMPT), 1, 32))
    video = np.repeat(frame, 12, axis=0)
    for metric in (subject_consistency, background_consistency, temporal_flickering, motion_smoothness):
        score, per = metric(video)
        assert score == pytest.approx(1.0, abs=1e-9) and np.allclose(per, 1.0)
    scores = all_metrics(video, PROMPT)
    assert scores["area_cv"][0] == pytest.approx(0.0, abs=1e-9) and scores["count_ok"][0] == 1.0


def test_colour_jump_scores_worse():
    scene = parse_prompt(PROMPT)
    smooth = uint8(render(scene, 20, 32))
    jumped = smooth.copy()
    green = uint8(render(parse_prompt(PROMPT.replace("red", "green")), 20, 32))
    jumped[10:] = green[10:]
    for metric in (subject_consistency, temporal_flickering, motion_smoothness):
        assert metric(jumped)[0] < metric(smooth)[0]
    # the per-frame series locate the jump: worst flicker between frames 9 and 10
    assert int(np.argmin(temporal_flickering(jumped)[1])) == 9
    colour = world_metrics(jumped, PROMPT)["colour_error"][1]
    assert colour[:10].max() < 0.02
    expected = np.linalg.norm(np.subtract(COLOURS["green"], COLOURS["red"]))
    assert np.allclose(colour[10:], expected, atol=0.02)


def test_linear_fade_is_smooth_but_flickers_by_its_step():
    video = np.stack([np.full((8, 8, 3), 10 + 5 * i, np.uint8) for i in range(10)])
    assert motion_smoothness(video)[0] == pytest.approx(1.0)
    assert temporal_flickering(video)[0] == pytest.approx(1 - 5 / 255)


@pytest.mark.parametrize("prompt,area", [
    (PROMPT, math.pi * OBJECT_RADIUS**2),
    ("a yellow square moving right on a checkered purple background", (2 * SQUARE_HALF_SIDE) ** 2),
    ("a white triangle moving down on a dotted green background", 3 * math.sqrt(3) / 4 * OBJECT_RADIUS**2),
])
@pytest.mark.parametrize("phase", [(0.3, 0.6), (0.02, 0.98)])  # the second is whole, touching two edges
def test_segmentation_recovers_rendered_object(prompt, area, phase):
    scene = parse_prompt(prompt)
    clean = (render(scene, 6, 32, phase=phase, speed=0.002) + 1) / 2  # slow: still whole at frame 5
    mask = segment_object(clean, scene.colour, scene.background)
    assert float(mask.float().mean()) == pytest.approx(area, rel=0.12)  # edges: about 3/4 covered counts
    assert count_components(mask).tolist() == [1] * 6
    got = clean.permute(0, 2, 3, 1)[mask].median(0).values
    assert torch.allclose(got, torch.tensor(COLOURS[scene.colour]), atol=0.01)
    scores = world_metrics(uint8(clean * 2 - 1), prompt)
    assert scores["colour_error"][0] < 0.01 and scores["area_error"][0] < 0.1 and scores["count_ok"][0] == 1


def test_count_components_and_missing_object():
    mask = torch.zeros(4, 16, 16, dtype=torch.bool)
    mask[0, 2:5, 2:5] = True
    mask[0, 10:13, 10:13] = True  # two blobs
    mask[1, 0:3, 14:16] = True
    mask[1, 0:3, 0:2] = True  # pieces at opposite edges: two (the world never cuts its object in two)
    mask[2, 5, 5] = True  # a speck below min_area: no object
    mask[3, 4:8, 4:6] = True
    mask[3, 8, 6] = True  # diagonal neighbours join
    assert count_components(mask).tolist() == [2, 2, 0, 1]
    empty = np.zeros((4, 16, 16, 3), np.uint8)
    empty[..., 2] = 240  # all background (blue)
    scores = world_metrics(empty, PROMPT)
    assert scores["colour_error"][0] == pytest.approx(math.sqrt(3)) and scores["count_ok"][0] == 0


def test_histogram_sums_to_one_and_is_soft():
    video = torch.full((2, 3, 4, 4), 0.5)
    hist = colour_histogram(video)
    assert torch.allclose(hist.sum(1), torch.ones(2))
    nudged = colour_histogram(video + 1e-3)
    assert (hist - nudged).abs().max() < 0.02  # mid-grey on a bin edge does not flip bins


def test_hf_extractor_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        HFImageFeatures(tmp_path / "facebook-dino-vitb16")
