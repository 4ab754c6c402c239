"""The procedural world's motion: the object is never cut in two, drifts by bouncing, moves by leaving
through one edge and coming back through the opposite one."""

import math

import pytest
import torch

from miga_fast.models.tiny.world import MOTIONS, OBJECT_RADIUS, SQUARE_HALF_SIDE, parse_prompt, render
from miga_fast.quality.metrics import count_components, segment_object


def object_masks(prompt: str, frames: int, phase=(0.3, 0.6)) -> torch.Tensor:
    scene = parse_prompt(prompt)
    return segment_object((render(scene, frames, 32, phase=phase) + 1) / 2, scene.colour, scene.background)


def centre(mask: torch.Tensor) -> tuple[float, float]:
    ys, xs = mask.nonzero(as_tuple=True)
    return float(xs.float().mean()), float(ys.float().mean())


@pytest.mark.parametrize("motion", list(MOTIONS))
@pytest.mark.parametrize("shape", ["circle", "square"])
def test_object_is_never_in_two_pieces_and_keeps_its_size(motion, shape):
    masks = object_masks(f"a red {shape} {motion} on a plain blue background", 150)
    assert count_components(masks, min_area=1).max() == 1  # never two pieces at opposite edges
    area = masks.float().mean((1, 2))
    whole = math.pi * OBJECT_RADIUS**2 if shape == "circle" else (2 * SQUARE_HALF_SIDE) ** 2
    assert float(area[0]) == pytest.approx(whole, rel=0.12)  # whole at t = 0
    assert float(area.max()) == pytest.approx(whole, rel=0.12)  # never larger


def test_drifting_bounces_and_stays_whole():
    masks = object_masks("a red circle drifting on a plain blue background", 300)
    area = masks.float().mean((1, 2))
    assert float(area.min() / area.max()) > 0.85  # whole in every frame
    xs = torch.tensor([centre(m)[0] for m in masks])
    steps = xs[1:] - xs[:-1]
    assert (steps > 0).any() and (steps < 0).any()  # it turns round at the edges
    assert float(xs.min()) < 8 and float(xs.max()) > 23  # and uses the frame: centre within 7 px of both edges


@pytest.mark.parametrize("motion,axis,sign", [("moving left", 0, -1), ("moving right", 0, 1), ("moving up", 1, -1),
                                              ("moving down", 1, 1)])
def test_moving_object_goes_its_way_leaves_and_comes_back(motion, axis, sign):
    masks = object_masks(f"a red circle {motion} on a plain blue background", 80)  # a loop is 1.4 / 0.02 = 70
    visible = masks.flatten(1).any(1)
    assert not bool(visible[20:50].all())  # out of the frame for a moment
    assert bool(visible[:10].all()) and bool(visible[70:].all())  # and back
    along = [centre(m)[axis] for m in masks[:5]]
    assert all(sign * (b - a) > 0 for a, b in zip(along, along[1:], strict=False))
    other = [centre(m)[1 - axis] for m in masks[:5]]
    assert max(other) - min(other) < 0.25  # straight along its axis (pixel masks: a tenth of a pixel of jitter)
