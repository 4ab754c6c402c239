"""Video quality metrics: VBench-style formulas with pluggable features, plus ground truth from the world.

Every metric takes a video as uint8 frames ``[F, H, W, 3]`` (numpy or torch, what `VideoGenerator.stream`
yields, stacked) and returns ``(score, per_frame)``: a float and a float64 numpy series for plots.

How each differs from VBench (https://github.com/Vchitect/VBench):

* subject_consistency: VBench's exact formula, mean over frames i >= 1 of
  ``(max(0, cos(f_i, f_{i-1})) + max(0, cos(f_i, f_0))) / 2``, but on our features: VBench uses DINO
  ViT-B/16 CLS features; the default here is `PixelFeatures` (no download: a colour histogram, mostly
  blind to motion like DINO, plus a little layout; `HFImageFeatures` loads a local DINO/CLIP when you
  have one). Our frames are 32x32, far below DINO's 224 input anyway.
* background_consistency: same formula; VBench uses CLIP ViT-B/32 on the whole frame, we use a
  low-pass `BackgroundFeatures` on the frame with the object pixels (when a mask is given) filled
  with the frame's mean background colour, so it scores the background only.
* temporal_flickering: VBench's ``(255 - mean |I_i - I_{i+1}|) / 255``, but on every video: VBench only
  scores videos of static prompts (filtered by a static-scene check), so here real motion (object,
  panning texture) also lowers it. Compare methods on the same prompts, never with VBench numbers.
* motion_smoothness: VBench interpolates the odd frames from the even ones with AMT and reports
  ``(255 - mean abs error) / 255``; we predict every interior frame as the mean of its two neighbours
  (linear interpolation, no flow), so the score is ``1 - mean|I_i - (I_{i-1}+I_{i+1})/2| / 255``.
  Linear interpolation is not motion-compensated: a moving object scores below 1 even when smooth.
* world metrics (no VBench counterpart): the prompt names the object's and the background's palette
  colours, so pixels far from the background colour's brightness ramp are the object; from that mask
  we read the object's colour, area and connected-component count per frame (`world_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.tiny.world import COLOURS, parse_prompt, render

FeatureFn = Callable[[Tensor], Tensor]  # video float [F, 3, H, W] in [0, 1] -> features [F, D]


def as_video(frames) -> Tensor:
    """uint8 frames [F, H, W, 3] (numpy/torch/list) -> float32 [F, 3, H, W] in [0, 1]."""
    if isinstance(frames, list | tuple):
        frames = np.stack(frames)
    v = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"video must be [F, H, W, 3] (got {tuple(v.shape)})")
    return v.permute(0, 3, 1, 2).float() / 255.0


# ---------------------------------------------------------------- feature extractors
class PixelFeatures:
    """Download-free frame features [F, D]: sqrt of a soft joint colour histogram (unit norm) plus
    `layout` x a unit-norm coarse pixel grid in [-1, 1].

    The histogram is translation invariant, like the object identity DINO is used for in VBench: it
    moves when the subject's colour or size changes, not when it moves (the square root keeps the
    object's ~9% of the pixels from being drowned by the background). The small layout term adds
    where things are; at 1.0 it would dominate and score motion as inconsistency.
    """

    def __init__(self, grid: int = 8, bins: int = 4, layout: float = 0.25):
        self.grid, self.bins, self.layout = grid, bins, layout

    def __call__(self, video: Tensor) -> Tensor:
        pix = F.normalize(F.adaptive_avg_pool2d(video, self.grid).flatten(1) * 2 - 1, dim=1)
        return torch.cat([colour_histogram(video, self.bins).sqrt(), self.layout * pix], 1)


class BackgroundFeatures:
    """Low-pass background features [F, D]: a `grid` x `grid` average of the frame in [-1, 1].

    With 8x8-pixel cells the textures' fine structure averages out, leaving the background's colour
    and brightness layout, which is what should stay put.
    """

    def __init__(self, grid: int = 4):
        self.grid = grid

    def __call__(self, video: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(video, self.grid).flatten(1) * 2 - 1


def colour_histogram(video: Tensor, bins: int = 4) -> Tensor:
    """Soft (linear-interpolated) joint RGB histogram [F, bins^3] of video [F, 3, H, W], sums to 1.

    Soft binning so a colour sitting on a bin edge (mid-grey is 0.5) does not flip bins with noise.
    """
    centres = (torch.arange(bins, dtype=video.dtype) + 0.5) / bins
    x = video.flatten(2).clamp(centres[0], centres[-1])  # [F, 3, P]
    w = (1 - (x[..., None] - centres).abs() * bins).clamp(min=0)  # [F, 3, P, bins]
    hist = torch.einsum("fpi,fpj,fpk->fijk", w[:, 0], w[:, 1], w[:, 2]).flatten(1)
    return hist / hist.sum(1, keepdim=True)


class HFImageFeatures:
    """DINO / CLIP image features from a LOCAL Hugging Face folder (never downloads); lazy import.

    kind "dino": CLS token of the last hidden state (VBench subject consistency uses DINO ViT-B/16);
    kind "clip": `get_image_features` (VBench background consistency uses CLIP ViT-B/32).
    """

    def __init__(self, path: str | Path, kind: str = "dino", device: str = "cpu"):
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a local model folder (this extractor never downloads)")
        if kind not in ("dino", "clip"):
            raise ValueError(f"kind must be 'dino' or 'clip' (got {kind!r})")
        from transformers import AutoImageProcessor, AutoModel, CLIPModel

        self.kind, self.device = kind, device
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        cls = CLIPModel if kind == "clip" else AutoModel
        self.model = cls.from_pretrained(path, local_files_only=True).to(device).eval()

    @torch.no_grad()
    def __call__(self, video: Tensor) -> Tensor:
        images = [(f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for f in video]
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        if self.kind == "clip":
            return self.model.get_image_features(**inputs).float().cpu()
        return self.model(**inputs).last_hidden_state[:, 0].float().cpu()


# ---------------------------------------------------------------- VBench-style metrics
def feature_consistency(features: Tensor) -> tuple[float, np.ndarray]:
    """VBench's consistency of features [F, D]: per frame i >= 1, mean of clamped cosine to i-1 and to 0."""
    f = F.normalize(features.double(), dim=1)
    if len(f) < 2:
        return 1.0, np.ones(0)
    prev = (f[1:] * f[:-1]).sum(1).clamp(min=0)
    first = (f[1:] * f[:1]).sum(1).clamp(min=0)
    per = ((prev + first) / 2).numpy()
    return float(per.mean()), per


def subject_consistency(frames, extractor: FeatureFn | None = None) -> tuple[float, np.ndarray]:
    """VBench subject consistency on whole frames; per-frame series has F-1 entries."""
    return feature_consistency((extractor or PixelFeatures())(as_video(frames)))


def background_consistency(frames, extractor: FeatureFn | None = None,
                           object_mask: Tensor | None = None) -> tuple[float, np.ndarray]:
    """VBench background consistency; object_mask [F, H, W] bool pixels are filled before features."""
    video = as_video(frames)
    if object_mask is not None:
        keep = (~object_mask)[:, None].float()  # [F, 1, H, W]
        mean = (video * keep).sum((2, 3), keepdim=True) / keep.sum((2, 3), keepdim=True).clamp(min=1)
        video = video * keep + mean * (1 - keep)
    return feature_consistency((extractor or BackgroundFeatures())(video))


def temporal_flickering(frames) -> tuple[float, np.ndarray]:
    """(255 - mean |I_i - I_{i+1}|) / 255 over consecutive pairs (F-1 entries), VBench's form."""
    v = as_video(frames).double() * 255
    per = 1 - (v[1:] - v[:-1]).abs().mean((1, 2, 3)).numpy() / 255
    return (float(per.mean()) if len(per) else 1.0), per


def motion_smoothness(frames) -> tuple[float, np.ndarray]:
    """1 - mean |I_i - (I_{i-1} + I_{i+1})/2| / 255 over interior frames (F-2 entries); linear, not AMT."""
    v = as_video(frames).double() * 255
    per = 1 - (v[1:-1] - (v[:-2] + v[2:]) / 2).abs().mean((1, 2, 3)).numpy() / 255
    return (float(per.mean()) if len(per) else 1.0), per


# ---------------------------------------------------------------- ground truth from the procedural world
BRIGHTNESS = (0.5, 1.05)  # background pixels are colour * (0.55 .. 1.0) (world.render), with slack


def _distance_to_ramp(pixels: Tensor, colour: Tensor) -> Tensor:
    """Distance of RGB pixels [..., 3] to the segment {b * colour : b in BRIGHTNESS}."""
    b = ((pixels * colour).sum(-1) / (colour * colour).sum()).clamp(*BRIGHTNESS)
    return (pixels - b[..., None] * colour).norm(dim=-1)


def segment_object(video: Tensor, object_colour: str, background_colour: str) -> Tensor:
    """Object mask [F, H, W] bool of video [F, 3, H, W] in [0, 1] from the prompt's palette colours.

    A pixel is object when it is farther from the background's brightness ramp than 0.6 x the object
    colour's own distance from it: antialiased edges count when about 3/4 covered (not 1/2: the 2x
    supersampled renderer makes exactly-half-covered pixels, which would flip with uint8 rounding),
    and a drifted object still counts as long as it does not turn into the background.
    """
    obj = torch.tensor(COLOURS[object_colour], dtype=video.dtype)
    bg = torch.tensor(COLOURS[background_colour], dtype=video.dtype)
    threshold = 0.6 * float(_distance_to_ramp(obj, bg))
    return _distance_to_ramp(video.permute(0, 2, 3, 1), bg) > threshold


def count_components(mask: Tensor, min_area: int = 4) -> Tensor:
    """Connected components (8-neighbour) of at least `min_area` pixels per frame of mask [F, H, W]: int64 [F].

    Label propagation, so no scipy needed. Pieces at opposite edges are two components: the world never
    cuts its object in two (it leaves through one edge and comes back whole)."""
    Fn, H, W = mask.shape
    ids = torch.arange(1, H * W + 1, dtype=torch.float32).view(1, 1, H, W).expand(Fn, 1, H, W)
    m = mask[:, None].float()
    labels = ids * m
    for _ in range(H * W):
        grown = F.max_pool2d(F.pad(labels, (1, 1, 1, 1)), 3, stride=1) * m
        if torch.equal(grown, labels):
            break
        labels = grown
    counts = torch.zeros(Fn, dtype=torch.int64)
    for i in range(Fn):
        _, sizes = torch.unique(labels[i][labels[i] > 0], return_counts=True)
        counts[i] = int((sizes >= min_area).sum())
    return counts


def world_reference(prompt: str, size: int, frames: int = 16) -> dict:
    """Area fraction of the whole object in noise-free world frames of `prompt` (same segmentation)."""
    scene = parse_prompt(prompt)
    # slow, from the centre: whole in every frame; a mean over poses, as edge pixels count by coverage
    clean = (render(scene, frames, size, phase=(0.5, 0.5), speed=0.002) + 1) / 2
    mask = segment_object(clean, scene.colour, scene.background)
    return {"area": float(mask.float().mean()), "colour": COLOURS[scene.colour]}


def world_metrics(frames, prompt: str, min_area: int = 4) -> dict[str, tuple[float, np.ndarray]]:
    """Object colour / size / count stability against the world's ground truth for `prompt`.

    colour_error: |median object RGB - palette colour| in [0, 1] RGB units (sqrt(3) when the object is
    missing, the largest possible error); area_error: |area / whole object's area - 1| (nonzero in the world
    itself while the object crosses an edge, the same for every variant); count_ok: 1 when
    exactly one object component is present. Summaries are means over frames (lower error better);
    area_cv is the std/mean of the area over time (0 = perfectly stable size).
    """
    scene = parse_prompt(prompt)
    video = as_video(frames)
    mask = segment_object(video, scene.colour, scene.background)
    ref = world_reference(prompt, video.shape[-1])
    target = torch.tensor(ref["colour"], dtype=video.dtype)
    pixels = video.permute(0, 2, 3, 1)
    colour_err = np.full(len(video), math.sqrt(3))
    for i in range(len(video)):
        if int(mask[i].sum()) >= min_area:
            colour_err[i] = float((pixels[i][mask[i]].median(0).values - target).norm())
    area = mask.float().mean((1, 2)).double().numpy()
    area_err = np.abs(area / ref["area"] - 1)
    count_ok = (count_components(mask, min_area) == 1).double().numpy()
    cv = float(area.std() / area.mean()) if area.mean() > 0 else float("inf")
    return {
        "colour_error": (float(colour_err.mean()), colour_err),
        "area_error": (float(area_err.mean()), area_err),
        "area_cv": (cv, area),
        "count_ok": (float(count_ok.mean()), count_ok),
    }


def all_metrics(frames, prompt: str | None = None, extractor: FeatureFn | None = None,
                background_extractor: FeatureFn | None = None) -> dict[str, tuple[float, np.ndarray]]:
    """Every metric of one video; the world metrics and the background mask need the prompt."""
    out = {
        "subject_consistency": subject_consistency(frames, extractor),
        "temporal_flickering": temporal_flickering(frames),
        "motion_smoothness": motion_smoothness(frames),
    }
    mask = None
    if prompt is not None:
        scene = parse_prompt(prompt)
        mask = segment_object(as_video(frames), scene.colour, scene.background)
        out.update(world_metrics(frames, prompt))
    out["background_consistency"] = background_consistency(frames, background_extractor, mask)
    return out


# Which direction is better, for tables: +1 higher is better, -1 lower is better.
DIRECTION = {"subject_consistency": 1, "background_consistency": 1, "temporal_flickering": 1,
             "motion_smoothness": 1, "colour_error": -1, "area_error": -1, "area_cv": -1, "count_ok": 1,
             "shape_accuracy": 1, "motion_accuracy": 1}  # the last two: scorer.py, through study.py
