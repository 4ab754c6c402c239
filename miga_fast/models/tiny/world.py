"""A procedural video world for the bundled model: coloured shapes moving over panning textures.

A prompt follows a small grammar:
    "a <colour> <shape> <motion> on a <pattern> <colour> background"
e.g. "a red circle moving left on a striped blue background". Shapes keep identity, colour and
size forever, square and triangle rotate slowly, the background texture pans slowly with the
motion; a drifting object bounces off the frame edges, a moving one leaves through one edge and comes
back through the opposite one, so a video can run for any number of frames and the object is never cut
in two: keeping all of that consistent over hundreds of frames is exactly what long-video methods fight.
Frames are rendered analytically (signed distances, 2x supersampling) in [-1, 1], [3, H, W].
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import ConfigError

COLOURS = {
    "red": (0.90, 0.15, 0.15), "green": (0.15, 0.75, 0.25), "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15), "white": (0.95, 0.95, 0.95), "purple": (0.60, 0.25, 0.80),
    "orange": (0.95, 0.55, 0.10), "gray": (0.50, 0.50, 0.50),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = {"moving left": (-1.0, 0.0), "moving right": (1.0, 0.0), "moving up": (0.0, -1.0),
           "moving down": (0.0, 1.0), "drifting": (0.7, 0.45)}
PATTERNS = ("striped", "checkered", "dotted", "plain")
OBJECT_RADIUS = 0.2  # fraction of the frame: a 13 px circle at 32x32, three patches of the bundled DiT across
SQUARE_HALF_SIDE = 0.85 * OBJECT_RADIUS  # about the circle's area; the triangle's vertices sit on the circle
VOCABULARY = sorted({"a", "on", "background", *COLOURS, *SHAPES, *PATTERNS,
                     *(w for m in MOTIONS for w in m.split())})


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    motion: str
    pattern: str
    background: str

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} {self.motion} on a {self.pattern} {self.background} background"


def parse_prompt(prompt: str) -> Scene:
    """Prompt -> Scene. Unknown words or a malformed sentence raise ConfigError naming them."""
    words = prompt.lower().replace(",", " ").split()
    unknown = [w for w in words if w not in VOCABULARY]
    if unknown:
        raise ConfigError(f"prompt has words the bundled model does not know: {unknown}; "
                          f"known words: {', '.join(VOCABULARY)}")
    form = ("expected 'a <colour> <shape> <motion> on a <pattern> <colour> background', e.g. "
            f"'{Scene('red', 'circle', 'moving left', 'striped', 'blue').prompt}'")
    try:
        a, colour, shape = words[:3]
        motion_len = 1 if words[3] == "drifting" else 2
        motion = " ".join(words[3 : 3 + motion_len])
        on, a2, pattern, background, bg_word = words[3 + motion_len :]
    except (ValueError, IndexError):
        raise ConfigError(f"prompt {prompt!r} does not follow the grammar: {form}") from None
    ok = (a == a2 == "a" and on == "on" and bg_word == "background" and colour in COLOURS and shape in SHAPES
          and motion in MOTIONS and pattern in PATTERNS and background in COLOURS)
    if not ok:
        raise ConfigError(f"prompt {prompt!r} does not follow the grammar: {form}")
    return Scene(colour, shape, motion, pattern, background)


def random_scene(rng: random.Random) -> Scene:
    colour = rng.choice(list(COLOURS))
    background = rng.choice([c for c in COLOURS if c != colour])
    return Scene(colour, rng.choice(SHAPES), rng.choice(list(MOTIONS)), rng.choice(PATTERNS), background)


def render(scene: Scene, frames: int, size: int = 32, start: float = 0.0, phase: tuple[float, float] = (0.3, 0.6),
           speed: float = 0.02) -> Tensor:
    """Render frames [start, start+frames) of `scene`: [frames, 3, size, size] in [-1, 1].

    `phase`: where the object is at time 0, as fractions of the range in which it is whole (see _track);
    `speed` in frame widths per frame.
    """
    ss = 2 * size  # supersampled grid, averaged down at the end
    coords = (torch.arange(ss, dtype=torch.float32) + 0.5) / ss
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    t = start + torch.arange(frames, dtype=torch.float32)[:, None, None]
    vx, vy = MOTIONS[scene.motion]
    # background: texture panning at a third of the object's speed
    # Texture cells are 8-11 px at 32x32 (two or more 4x4 patches of the bundled DiT): finer ones (5-6 px)
    # sit below what a 0.6 M-parameter patch-4 model can draw and were rendered by it as noise.
    bx, by = x - t * vx * speed / 3, y - t * vy * speed / 3
    if scene.pattern == "striped":
        tex = (torch.sin(2 * math.pi * (bx + 0.5 * by) * 3) > 0).float()
    elif scene.pattern == "checkered":
        tex = ((torch.floor(bx * 4) + torch.floor(by * 4)) % 2).float()
    elif scene.pattern == "dotted":
        dx, dy = (bx * 4) % 1 - 0.5, (by * 4) % 1 - 0.5
        tex = ((dx**2 + dy**2) < 0.09).float()
    else:
        tex = 0.25 * (bx % 1.0)
    bg = torch.tensor(COLOURS[scene.background])[:, None, None, None]
    img = bg * (0.55 + 0.45 * tex)[None]  # [3, F, ss, ss]
    # object: rotates if it has corners; positions never wrap the object around an edge (see _track)
    r = OBJECT_RADIUS
    extent = SQUARE_HALF_SIDE * math.sqrt(2) if scene.shape == "square" else r  # farthest point from the centre
    bounce = scene.motion == "drifting"
    cx = _track(phase[0], vx * speed, t, extent, bounce)
    cy = _track(phase[1], vy * speed, t, extent, bounce)
    dx, dy = x - cx, y - cy
    angle = t * 0.05
    rx = dx * torch.cos(angle) + dy * torch.sin(angle)
    ry = -dx * torch.sin(angle) + dy * torch.cos(angle)
    if scene.shape == "circle":
        mask = (dx**2 + dy**2) < r**2
    elif scene.shape == "square":
        mask = torch.maximum(rx.abs(), ry.abs()) < SQUARE_HALF_SIDE
    else:  # equilateral triangle, pointing up in its own frame
        k = math.sqrt(3.0)
        mask = (ry < r * 0.5) & (k * rx - ry < r) & (-k * rx - ry < r)
    obj = torch.tensor(COLOURS[scene.colour])[:, None, None, None]
    img = torch.where(mask[None], obj.expand_as(img), img)
    img = torch.nn.functional.avg_pool2d(img.permute(1, 0, 2, 3), 2)  # [F, 3, size, size]
    return img * 2 - 1


def _track(phase: float, velocity: float, t: Tensor, extent: float, bounce: bool) -> Tensor:
    """Object centre along one axis (frame fractions) at times t, for an object reaching `extent` from it.

    At t = 0 the object is whole, at `phase` of the range [extent, 1 - extent]. Still axis: stays there.
    Bouncing: reflects off the edges of that range. Moving: travels a loop of length 1 + 2 extent, leaving
    through one edge and entering through the opposite one. Wrapping at the frame itself would show most
    frames' object in two pieces at opposite edges (64 % of frames at this object size): the model then
    learned fragments, not shapes.
    """
    inner = 1 - 2 * extent
    if velocity == 0:
        return torch.full_like(t, extent + phase * inner)
    if bounce:
        u = (phase + t * velocity / inner) % 2.0  # unfolded position, in ranges; 1..2 is the way back
        return extent + inner * torch.where(u < 1, u, 2 - u)
    loop = 1 + 2 * extent
    return (2 * extent + phase * inner + t * velocity) % loop - extent


def sample_clips(batch: int, frames: int, size: int, rng: random.Random) -> tuple[Tensor, list[str]]:
    """Training clips [batch, 3, frames, size, size] and their prompts, random scenes and phases."""
    clips, prompts = [], []
    for _ in range(batch):
        scene = random_scene(rng)
        clip = render(scene, frames, size, start=rng.uniform(0, 1000), phase=(rng.random(), rng.random()))
        clips.append(clip.permute(1, 0, 2, 3))
        prompts.append(scene.prompt)
    return torch.stack(clips), prompts
