"""The scorer on ground-truth world clips (it must read them right) and on wrong answers (it must catch them)."""

import functools
import random

import numpy as np
import pytest
import torch

from miga_fast.models.tiny.world import COLOURS, MOTIONS, PATTERNS, SHAPES, Scene, render
from miga_fast.quality.scorer import label_torus, score_clip, score_video

PAIRS = [(c, b) for c in COLOURS for b in COLOURS if c != b]


def uint8(video: torch.Tensor) -> np.ndarray:
    """world.render output [F, 3, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    return ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def clip(scene: Scene, frames: int, rng: random.Random) -> np.ndarray:
    return uint8(render(scene, frames, 32, start=rng.uniform(0, 1000), phase=(rng.random(), rng.random())))


@functools.cache
def truth_clips(frames: int = 24, seeds: int = 2) -> list[tuple[Scene, np.ndarray]]:
    """Every ordered colour pair x `seeds`; shapes, motions and patterns cycle so that every shape x motion
    combination and every pattern comes up many times."""
    rng = random.Random(1)
    out = []
    for i, (colour, background) in enumerate(PAIRS * seeds):
        scene = Scene(colour, SHAPES[i % 3], list(MOTIONS)[i % 5], PATTERNS[(i // 3) % 4], background)
        out.append((scene, clip(scene, frames, rng)))
    return out


def pooled(scores) -> dict[str, float]:
    """Accuracies over all judged frames / windows of many scores (not a mean of per-clip fractions)."""
    shape = np.concatenate([s.shape_ok for s in scores])
    motion = np.concatenate([s.motion_ok for s in scores])
    count = np.concatenate([s.count_ok for s in scores])
    return {"shape": float(np.nanmean(shape)), "shape_judged": float(np.isfinite(shape).mean()),
            "motion": float(np.nanmean(motion)), "motion_judged": float(np.isfinite(motion).mean()),
            "count": float(count.mean())}


def test_ground_truth_is_read_right():
    scores = [score_video(frames, scene.prompt, window=8) for scene, frames in truth_clips()]
    acc = pooled(scores)
    assert acc["shape"] >= 0.97 and acc["motion"] >= 0.97 and acc["count"] >= 0.97, acc
    # not vacuous: half the frames show a whole object (moving ones are cut at an edge for the rest) and the
    # motion is judged in most windows (the rest: the object out of sight between the edges)
    assert acc["shape_judged"] >= 0.4 and acc["motion_judged"] >= 0.85, acc
    for shape in SHAPES:  # every shape is recognised, not just the commonest answer
        sel = [s for (scene, _), s in zip(truth_clips(), scores, strict=True) if scene.shape == shape]
        assert pooled(sel)["shape"] >= 0.97, shape
    for motion in MOTIONS:
        sel = [s for (scene, _), s in zip(truth_clips(), scores, strict=True) if scene.motion == motion]
        assert pooled(sel)["motion"] >= 0.97, motion


def test_plain_clips_and_bounces():
    """The model's own 8-frame window as one motion window; long drifting clips bounce off every edge."""
    rng = random.Random(2)
    short = []
    for i in range(60):
        colour, background = PAIRS[(7 * i) % len(PAIRS)]
        scene = Scene(colour, SHAPES[i % 3], list(MOTIONS)[i % 5], PATTERNS[i % 4], background)
        short.append(score_clip(clip(scene, 8, rng), scene.prompt))
    acc = pooled(short)
    assert acc["shape"] >= 0.97 and acc["motion"] >= 0.97 and acc["count"] >= 0.97, acc
    drifting = []
    for i, shape in enumerate(SHAPES * 2):
        scene = Scene("yellow", shape, "drifting", PATTERNS[i % 4], "blue")
        video = uint8(render(scene, 160, 32, phase=(rng.random(), rng.random())))
        drifting.append(score_video(video, scene.prompt))
        centre = drifting[-1].centre
        # 160 frames is more than a bounce period on both axes: both directions reverse
        assert all((np.diff(centre[:, a]) > 0).any() and (np.diff(centre[:, a]) < 0).any() for a in (0, 1))
    acc = pooled(drifting)
    assert acc["motion"] >= 0.97 and acc["count"] == 1.0 and acc["shape"] >= 0.97, acc


def test_wrong_shape_is_caught():
    for scene, frames in truth_clips()[:30]:
        for other in SHAPES:
            if other != scene.shape:
                score = score_video(frames, scene.prompt.replace(scene.shape, other))
                if np.isfinite(score.shape_ok).any():
                    assert score.shape_accuracy <= 0.1, (scene.prompt, other)


def test_wrong_motion_is_caught():
    opposite = {"moving left": "moving right", "moving right": "moving left", "moving up": "moving down",
                "moving down": "moving up"}
    turned = {"moving left": "moving up", "moving right": "moving down", "moving up": "moving right",
              "moving down": "moving left", "drifting": "moving right"}
    judged = 0
    for scene, frames in truth_clips()[:40]:
        if scene.motion in opposite:  # the clip played backwards is the opposite motion
            backwards = score_video(frames[::-1].copy(), scene.prompt)
            assert np.nansum(backwards.motion_ok) == 0, scene.prompt
            judged += np.isfinite(backwards.motion_ok).sum()
        wrong = score_video(frames, scene.prompt.replace(scene.motion, turned[scene.motion]))
        assert np.nansum(wrong.motion_ok) == 0, (scene.prompt, turned[scene.motion])
        if scene.motion != "drifting":  # a straight mover scored as drifting: one axis does not move
            assert np.nansum(score_video(frames, scene.prompt.replace(scene.motion, "drifting")).motion_ok) == 0
    assert judged >= 40
    scene, frames = truth_clips()[0]
    still = np.repeat(frames[5:6], 16, axis=0)  # an object that does not move at all
    assert score_video(still, scene.prompt).motion_accuracy == 0.0


def test_wrong_colour_and_count_are_caught():
    scene = Scene("red", "circle", "drifting", "striped", "blue")
    frames = clip(scene, 16, random.Random(3))
    assert score_video(frames, scene.prompt).count_accuracy == 1.0
    # an orange object is not the red one, though far from the blue background
    assert score_video(frames, scene.prompt.replace("a red", "a orange")).count_accuracy == 0.0
    # a second object: the same clip shifted by half the frame, where its background is
    two = frames.copy()
    shifted = np.roll(frames, (16, 16), axis=(1, 2))
    obj = np.all(np.abs(shifted.astype(int) - np.array(COLOURS["red"]) * 255) < 30, axis=-1)
    two[obj] = shifted[obj]
    assert score_video(two, scene.prompt).count_accuracy == 0.0
    # specks below the size threshold are ignored
    specks = frames.copy()
    specks[:, 2, 28] = specks[:, 29, 3] = np.round(np.array(COLOURS["red"]) * 255).astype(np.uint8)
    assert score_video(specks, scene.prompt).count_accuracy == 1.0


def test_object_wrapped_around_the_frame_is_one_object():
    """A model may draw its object in pieces at opposite edges (the world never does): one object, its shape
    read whole, its centroid on the torus."""
    for shape in SHAPES:
        scene = Scene("white", shape, "moving right", "plain", "purple")
        frames = uint8(render(scene, 8, 32, phase=(0.5, 0.5)))  # whole, centre x from 0.5 to 0.64
        base = score_clip(frames, scene.prompt)
        rolled = np.roll(frames, (16, 16), axis=(1, 2))  # the object split in four at the corners
        score = score_clip(rolled, scene.prompt)
        assert score.wrapped.all() and score.count_accuracy == 1.0
        assert score.shape_accuracy == base.shape_accuracy == 1.0 and score.motion_accuracy == 1.0
        assert np.allclose((base.centre + 0.5) % 1, score.centre, atol=1e-6)


def test_torus_labelling():
    mask = np.zeros((1, 6, 6), bool)
    mask[0, 2, 0] = mask[0, 2, 5] = True  # neighbours across the seam
    mask[0, 4, 2] = True
    labels = label_torus(mask)
    assert labels[0, 2, 0] == labels[0, 2, 5] != labels[0, 4, 2] > 0
    assert len(np.unique(labels[labels > 0])) == 2


def test_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        score_video(np.zeros((4, 32, 32, 3), np.float32), "a red circle moving left on a striped blue background")
