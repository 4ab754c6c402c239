"""A scorer that reads a rendered clip of the procedural world against its prompt.

Per frame: segment the object by the prompt's colour (nearest palette colour: the object's colour, the
background's brightness ramp, or any other palette colour, from `world.COLOURS`), label its connected
components on the torus (a model may draw an object wrapped around the frame; the world never does), classify
the largest one's shape by IoU with the world's ideal circle / square / triangle over rotations (area-matched
size, centred on the component's centroid) and track its centroid. Per window of frames: judge the motion
from the centroid track (direction and speed of "moving ...", whose centroid unwraps across the frame;
per-axis speed and bounce positions of "drifting").

    score = score_video(frames, prompt, window=8)   # frames uint8 [F, H, W, 3]
    score.shape_accuracy, score.motion_accuracy, score.count_accuracy

Shape is only judged on frames where the object touches no frame edge (a component cut by the frame edge is a
partial shape: a square's corner reads as a triangle); `shape_frames` says on how many frames it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..models.tiny.world import COLOURS, MOTIONS, OBJECT_RADIUS, SHAPES, SQUARE_HALF_SIDE, parse_prompt

SPEED = 0.02  # world.render's default speed (frame widths per frame), what the bundled model was trained on
OBJECT_RAMP = (0.75, 1.0)  # the world draws the object at exactly its colour; slack below for a darker drawing
BACKGROUND_RAMP = (0.55, 1.0)  # world.render: background = colour * (0.55 + 0.45 * texture), texture in [0, 1]
MIN_AREA_FRACTION = 0.05  # components under 5% of the ideal object's area are specks
TANGENT = 0.6  # an edge contact narrower than this x the object's widest line along that edge is no cut
MIN_IOU = 0.6  # best-template IoU below this is no shape at all (ground truth: >= 0.8, see tests)
SPEED_RANGE = (0.3, 2.5)  # x the expected speed; a cut object's centroid moves at half speed
CROSS_LIMIT = 0.35  # perpendicular drift of "moving ..." allowed, x the expected speed
WALL_TOLERANCE = 0.08  # frame fractions (2.6 px at 32): a drifting object's bounce apex vs where the world bounces
BOUNCE_MIN = 0.03  # frame fractions: a path bending by less than this (1 px at 32) is no bounce
ANGLES = {"circle": 1, "square": 18, "triangle": 24}  # rotations tried: 5 degree steps over each symmetry period
PERIOD = {"circle": 1.0, "square": math.pi / 2, "triangle": 2 * math.pi / 3}
UNIT_AREA = {"circle": math.pi, "square": 4.0, "triangle": 3 * math.sqrt(3) / 4}  # at size 1 (radius/half side)


def extent(shape: str) -> float:
    """How far the shape's farthest point is from its centre (frame fractions), as world.render bounces it."""
    return SQUARE_HALF_SIDE * math.sqrt(2) if shape == "square" else OBJECT_RADIUS


def ideal_area(shape: str, size: int) -> float:
    """Area in pixels of the world's shape at frame size `size`."""
    r = (SQUARE_HALF_SIDE if shape == "square" else OBJECT_RADIUS) * size
    return UNIT_AREA[shape] * r * r


# ---------------------------------------------------------------- segmentation
def _ramp_distance(pixels: np.ndarray, colour: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Distance of RGB pixels [..., 3] to the segment {b * colour : lo <= b <= hi}: [...]."""
    b = np.clip((pixels @ colour) / (colour @ colour), lo, hi)
    return np.linalg.norm(pixels - b[..., None] * colour, axis=-1)


def segment(frames: np.ndarray, colour: str, background: str) -> np.ndarray:
    """Object mask bool [F, H, W] of uint8 frames [F, H, W, 3]: pixels whose nearest palette colour is `colour`.

    Candidates: the object's colour (OBJECT_RAMP), the background's brightness ramp (BACKGROUND_RAMP) and every
    other palette colour (OBJECT_RAMP), so an object drawn in a wrong colour is not the object however far it is
    from the background, and an off-colour drawing of the right one still is while it stays closest.
    """
    pixels = frames.astype(np.float32) / 255.0
    d_obj = _ramp_distance(pixels, np.array(COLOURS[colour], np.float32), *OBJECT_RAMP)
    rival = _ramp_distance(pixels, np.array(COLOURS[background], np.float32), *BACKGROUND_RAMP)
    for name, rgb in COLOURS.items():
        if name not in (colour, background):
            rival = np.minimum(rival, _ramp_distance(pixels, np.array(rgb, np.float32), *OBJECT_RAMP))
    return d_obj < rival


def label_torus(mask: np.ndarray) -> np.ndarray:
    """8-neighbour connected-component labels int64 [F, H, W] (0 = not object) of mask [F, H, W], on the torus.

    Pixels at opposite edges are neighbours (np.roll wraps), so an object drawn wrapped around the frame is one
    component. Max-label propagation, vectorised over frames; converges in about the largest component's
    diameter in steps.
    """
    Fn, H, W = mask.shape
    ids = np.arange(1, H * W + 1, dtype=np.int64).reshape(1, H, W)
    labels = np.where(mask, ids, 0)
    for _ in range(H * W):
        grown = labels.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    np.maximum(grown, np.roll(labels, (dy, dx), axis=(1, 2)), out=grown)
        grown *= mask
        if np.array_equal(grown, labels):
            break
        labels = grown
    return labels


def _axis_span(occupied: np.ndarray) -> tuple[float, int, bool]:
    """Occupied cells bool [N] of one axis (circular) -> (shift, side, wrapped).

    shift: where the largest empty gap ends, so (coord - shift) % N is contiguous for the component;
    side: 0 inside the frame on this axis, -1 / +1 cut by the low / high frame edge (partly outside the
    frame), 2 filling the axis; wrapped: it touches both edges across the seam (drawn around the frame).
    """
    n = len(occupied)
    if occupied.all():
        return 0.0, 2, False
    # largest circular run of empty cells: the component's unwrapped extent is its complement
    empty = ~np.concatenate([occupied, occupied])
    best, best_end, run = 0, 0, 0
    for i, e in enumerate(empty):
        run = run + 1 if e else 0
        if run > best:
            best, best_end = run, i
    shift = float((best_end + 1) % n)
    first, last = bool(occupied[0]), bool(occupied[-1])
    if first and last:
        return shift, 0, True
    return shift, -1 if first else (1 if last else 0), False


def _tangent(lines: np.ndarray, side: int) -> int:
    """side (see _axis_span), or 0 when the component only touches that edge: lines [N] are its pixel counts per
    line parallel to the edge, and the line at the edge is under TANGENT x the widest.

    The world bounces a circle where it touches the edge and keeps a mover's rotating corners inside by a hair:
    those touch the edge with a short chord (a circle: 5 of 13 px) and have lost under a pixel of themselves. A
    cut object meets the edge with a chord near its widest (a circle cut 2 px deep: 0.8 of it).
    """
    if side not in (-1, 1):
        return side
    edge = lines[0] if side == -1 else lines[-1]
    return 0 if edge < TANGENT * lines.max() else side


@dataclass
class _Frame:
    count: int = 0  # components of at least the minimum area
    border: bool = False  # some component (any size) touches the frame edge
    area: int = 0  # of the largest component, which the rest describes
    pixels: np.ndarray | None = None  # bool [H, W]
    centre: tuple[float, float] = (math.nan, math.nan)  # (x, y) frame fractions, centroid on the torus
    side: tuple[int, int] = (0, 0)  # per axis (x, y), see _axis_span
    inner: tuple[float, float] = (math.nan, math.nan)  # per cut axis: the edge of the component inside the frame
    wrapped: bool = False
    inside: bool = False  # touches no frame edge (after unwrapping): the only frames whose shape is judged

    @property
    def whole(self) -> bool:
        return self.side == (0, 0)


def _frames(mask: np.ndarray, min_area: float) -> list[_Frame]:
    """Per frame of mask [F, H, W]: components and the largest one's geometry."""
    labels = label_torus(mask)
    Fn, H, W = mask.shape
    out = []
    for i in range(Fn):
        f = _Frame()
        lab = labels[i]
        ids, sizes = np.unique(lab[lab > 0], return_counts=True)
        if len(ids):
            edge = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
            f.border = bool((edge > 0).any())
            f.count = int((sizes >= min_area).sum())
            comp = lab == ids[np.argmax(sizes)]
            f.pixels, f.area = comp, int(sizes.max())
            shift_x, side_x, wrap_x = _axis_span(comp.any(0))
            shift_y, side_y, wrap_y = _axis_span(comp.any(1))
            f.inside = side_x == side_y == 0
            side_x = _tangent(comp.sum(0), side_x)
            side_y = _tangent(comp.sum(1), side_y)
            ys, xs = np.nonzero(comp)
            # centroid in coordinates where the component is contiguous, then back onto the torus
            cx = (((xs - shift_x) % W).mean() + shift_x + 0.5) % W / W
            cy = (((ys - shift_y) % H).mean() + shift_y + 0.5) % H / H
            inner = [math.nan, math.nan]
            for axis, (side, coords, n) in enumerate(((side_x, xs, W), (side_y, ys, H))):
                if side == -1:
                    inner[axis] = (coords.max() + 1) / n
                elif side == 1:
                    inner[axis] = coords.min() / n
            f.centre, f.side, f.inner, f.wrapped = (cx, cy), (side_x, side_y), tuple(inner), wrap_x or wrap_y
        out.append(f)
    return out


# ---------------------------------------------------------------- shape
# (shape, rotation) of every template: ANGLES[shape] steps over the shape's symmetry period
_TEMPLATES = [(shape, PERIOD[shape] * k / ANGLES[shape]) for shape in SHAPES for k in range(ANGLES[shape])]


def _inside(shape: str, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """world.render's shapes at size 1 (radius 1 / half side 1), in their own rotated frame."""
    if shape == "circle":
        return rx**2 + ry**2 < 1
    if shape == "square":
        return np.maximum(np.abs(rx), np.abs(ry)) < 1
    k = math.sqrt(3.0)
    return (ry < 0.5) & (k * rx - ry < 1) & (-k * rx - ry < 1)


def classify_shape(component: np.ndarray, centre: tuple[float, float], supersample: int = 4) -> tuple[str, float]:
    """Largest-IoU world shape of a whole component bool [H, W] centred at `centre` (frame fractions).

    Each template is the world's shape rotated over its symmetry period, scaled to the component's area and
    centred on its centroid (the centroid of each shape is its centre), drawn with pixel coverage
    (`supersample`^2 points a pixel); IoU = sum(min) / sum(max). Returns (shape, IoU); "none" below MIN_IOU.
    """
    H, W = component.shape
    area = float(component.sum())
    s = supersample
    offs = (np.arange(s) + 0.5) / s
    gx = (np.arange(W)[:, None] + offs).ravel()
    gy = (np.arange(H)[:, None] + offs).ravel()
    # torus offsets from the centre, so a wrapped component is scored whole
    dx = (gx - centre[0] * W + W / 2) % W - W / 2
    dy = (gy - centre[1] * H + H / 2) % H - H / 2
    y, x = np.meshgrid(dy, dx, indexing="ij")  # [H*s, W*s]
    m = component.astype(np.float32)
    best = ("none", 0.0)
    for shape, angle in _TEMPLATES:
        scale = math.sqrt(area / UNIT_AREA[shape])
        c, sn = math.cos(angle) / scale, math.sin(angle) / scale
        inside = _inside(shape, x * c + y * sn, -x * sn + y * c)
        cover = inside.reshape(H, s, W, s).mean((1, 3))
        iou = float(np.minimum(cover, m).sum() / np.maximum(cover, m).sum())
        if iou > best[1]:
            best = (shape, iou)
    return best if best[1] >= MIN_IOU else ("none", best[1])


# ---------------------------------------------------------------- motion
def _pooled_slope(t: np.ndarray, p: np.ndarray, run: np.ndarray) -> float:
    """Least-squares slope of p [N] over t [N], one intercept per run id in run [N] (nan if no run has 2 points)."""
    tc, pc = t.astype(np.float64).copy(), p.astype(np.float64).copy()
    for r in np.unique(run):
        sel = run == r
        tc[sel] -= tc[sel].mean()
        pc[sel] -= pc[sel].mean()
    den = float((tc**2).sum())
    return float((tc * pc).sum() / den) if den > 0 else math.nan


def _runs(t: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Run id [N]: a new run at each gap in the times t [N] or change of kind [N]."""
    new = (np.diff(t) > 1) | (np.diff(kind) != 0)
    return np.concatenate([[0], np.cumsum(new)])


def judge_motion(frames: list[_Frame], t0: int, motion: str, shape: str, min_area: float,
                 speed: float = SPEED) -> bool | None:
    """Whether the object in one window (`frames`, the first at time t0) moves as `motion` says; None when
    fewer than 3 frames show enough of it to say (the caller decides whether that was allowed).

    "moving ...": velocity along the direction in SPEED_RANGE x speed, across it below CROSS_LIMIT x speed
    (from whole frames, when there are 3). Along the direction, a whole object's position is its centroid,
    unwrapped with period 1 (a model's object may wrap around the frame); an object cut by the edge it leaves or
    enters through is placed by its edge inside the frame (its centroid would move at a fraction of the speed
    and sideways as it rotates). The slope has one intercept per run of frames of one kind: while the world's
    object is out of the frame (up to ~10 frames) its centre travels on unseen. A window in which most frames are
    cut across the direction fails (the world never does that).
    "drifting": per axis, the path speed of the centroid through its most bent point (a bounce) in SPEED_RANGE x
    the axis's speed, and a bend only where the world bounces (the shape's extent from an edge); the object
    must not leave the frame (it bounces off the edges: a frame may cut no more than a 1/5 of it).
    """
    lo, hi = SPEED_RANGE
    vx, vy = MOTIONS[motion]
    t = np.arange(t0, t0 + len(frames), dtype=np.float64)
    present = np.array([f.area >= min_area or (f.area >= 2 and f.border) for f in frames])
    whole = present & np.array([f.whole for f in frames])
    centre = np.array([f.centre for f in frames], dtype=np.float64).reshape(-1, 2)
    if motion != "drifting":
        a = 0 if vx else 1
        b, sign = 1 - a, vx + vy
        side = np.array([f.side for f in frames], dtype=np.int64).reshape(-1, 2)
        inner = np.array([f.inner for f in frames], dtype=np.float64).reshape(-1, 2)
        cut_along = present & np.isin(side[:, a], (-1, 1)) & (side[:, b] == 0)
        cut_across = present & (side[:, b] != 0)
        if cut_across.sum() * 2 > present.sum():
            return False
        use = whole | cut_along
        if use.sum() < 3:
            return None
        kind = np.where(cut_along, side[:, a], 0)[use]
        pos = np.where(cut_along, inner[:, a], centre[:, a])[use]
        run = _runs(t[use], kind)
        for r in np.unique(run):  # a whole object's centroid may cross the seam (drawn wrapped)
            pos[run == r] = np.unwrap(pos[run == r], period=1.0)
        along = sign * _pooled_slope(t[use], pos, run)
        if not lo * speed <= along <= hi * speed:
            return False
        if whole.sum() >= 3:
            run = _runs(t[whole], np.zeros(int(whole.sum())))
            across = abs(_pooled_slope(t[whole], np.unwrap(centre[whole, b], period=1.0), run))
            if across > CROSS_LIMIT * speed:
                return False
        return True
    area = np.array([f.area for f in frames])
    if present.sum() < 3:
        return None
    if (present & ~whole & (area < 0.8 * area[present].max())).any():
        return False  # left the frame: a bouncing circle touches the edge, but stays whole
    tw, track = t[present], np.unwrap(centre[present], period=1.0, axis=0)
    wall = extent(shape)
    for axis, expected in ((0, abs(vx) * speed), (1, abs(vy) * speed)):
        p = track[:, axis]
        straight = abs(p[-1] - p[0])
        path = np.abs(p - p[0]) + np.abs(p[-1] - p)  # [N]: two straight legs through each point
        k = int(np.argmax(path))
        if path[k] - straight > BOUNCE_MIN:
            apex_wall = 1 - wall if p[k] > max(p[0], p[-1]) else wall
            if abs(p[k] - apex_wall) > WALL_TOLERANCE:
                return False
        if not lo * expected <= max(path[k], straight) / (tw[-1] - tw[0]) <= hi * expected:
            return False
    return True


# ---------------------------------------------------------------- API
@dataclass
class ClipScore:
    """What the scorer read from a clip of F frames in windows of `window` frames (W windows).

    Per frame [F]: count (components >= min area), count_ok (exactly one, or none while a moving object is in
    transit through an edge), shape ("circle" / "square" / "triangle" / "none"; "" when it touches the frame edge
    or is absent),
    shape_iou, shape_ok (nan when not judged), centre [F, 2] (x, y frame fractions; nan when absent), wrapped.
    Per window [W]: motion_ok, and shape / count accuracy within the window.
    """

    prompt: str
    window: int
    count: np.ndarray
    count_ok: np.ndarray
    shape: list[str]
    shape_iou: np.ndarray
    shape_ok: np.ndarray
    centre: np.ndarray
    wrapped: np.ndarray
    motion_ok: np.ndarray
    window_shape_accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    window_count_accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def shape_frames(self) -> float:
        """Fraction of frames on which the shape was judged (the object touching no frame edge)."""
        return float(np.isfinite(self.shape_ok).mean()) if len(self.shape_ok) else 0.0

    @property
    def shape_accuracy(self) -> float:
        """Correct shapes / judged frames (nan when none was judged)."""
        judged = self.shape_ok[np.isfinite(self.shape_ok)]
        return float(judged.mean()) if len(judged) else float("nan")

    @property
    def motion_accuracy(self) -> float:
        """Correct windows / judged windows (nan when none was judged)."""
        judged = self.motion_ok[np.isfinite(self.motion_ok)]
        return float(judged.mean()) if len(judged) else float("nan")

    @property
    def motion_windows(self) -> float:
        """Fraction of windows whose motion was judged (the rest: the object in transit out of sight)."""
        return float(np.isfinite(self.motion_ok).mean()) if len(self.motion_ok) else 0.0

    @property
    def count_accuracy(self) -> float:
        """The one-object fraction: frames with exactly one object (or a moving one in transit)."""
        return float(self.count_ok.mean())

    def summary(self) -> dict[str, float]:
        """The fractions above, and the fraction of frames with the object drawn wrapped around the frame."""
        return {"shape_accuracy": self.shape_accuracy, "shape_frames": self.shape_frames,
                "motion_accuracy": self.motion_accuracy, "motion_windows": self.motion_windows,
                "count_accuracy": self.count_accuracy, "wrapped_fraction": float(self.wrapped.mean())}


def _in_transit(count: np.ndarray, border: np.ndarray, shape: str, speed: float) -> np.ndarray:
    """bool [F]: frames without an object while a moving one passes out of the frame and back in.

    The world's object is out of sight while its nearest edge point (inradius) could not yet reach into the
    frame, on both sides of the seam: up to 2 (extent - inradius) / speed frames (circle: none, square: 7,
    triangle: 10 at the default speed), plus 3 frames on each side while less than `min_area` of it shows. A run
    of empty frames no longer than that is a transit when every frame next to it (where there is one) has the
    object at the frame edge.
    """
    inradius = {"circle": OBJECT_RADIUS, "square": SQUARE_HALF_SIDE, "triangle": OBJECT_RADIUS / 2}[shape]
    longest = 2 * (extent(shape) - inradius) / speed + 6
    ok = np.zeros(len(count), bool)
    i = 0
    while i < len(count):
        if count[i] != 0:
            i += 1
            continue
        j = i
        while j < len(count) and count[j] == 0:
            j += 1
        ends = [k for k in (i - 1, j) if 0 <= k < len(count)]
        if j - i <= longest and ends and all(border[k] for k in ends):
            ok[i:j] = True
        i = j
    return ok


def score_video(frames, prompt: str, window: int = 8, speed: float = SPEED) -> ClipScore:
    """Score uint8 frames [F, H, W, 3] (numpy or torch) against `prompt`; motion in windows of `window` frames
    (non-overlapping; a last partial window of at least 3 frames is judged too)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3] (got {frames.dtype} {frames.shape})")
    scene = parse_prompt(prompt)
    Fn, H, W, _ = frames.shape
    min_area = max(3.0, MIN_AREA_FRACTION * ideal_area(scene.shape, W))
    info = _frames(segment(frames, scene.colour, scene.background), min_area)
    moving = scene.motion != "drifting"
    border = np.array([f.border for f in info])
    count = np.array([f.count for f in info])
    count_ok = count == 1
    if moving:
        count_ok |= _in_transit(count, border, scene.shape, speed)
    shapes, iou, shape_ok = [], np.full(Fn, np.nan), np.full(Fn, np.nan)
    for i, f in enumerate(info):
        # strictly inside: a tangent triangle may have lost a tip of 3 px, which reads as a rounder shape
        if f.count >= 1 and f.inside:
            name, iou[i] = classify_shape(f.pixels, f.centre)
            shape_ok[i] = float(name == scene.shape)
            shapes.append(name)
        else:
            shapes.append("")
    centre = np.array([f.centre if f.area >= min_area else (np.nan, np.nan) for f in info],
                      dtype=np.float64).reshape(Fn, 2)
    starts = [s for s in range(0, Fn, window) if min(window, Fn - s) >= 3] or [0]
    motion_ok, win_shape, win_count = [], [], []
    for s in starts:
        sl = slice(s, s + window)
        ok = judge_motion(info[sl], s, scene.motion, scene.shape, min_area, speed)
        # too little of the object to judge: fine while it is in transit (count_ok), wrong when it is missing
        motion_ok.append(np.nan if ok is None and count_ok[sl].all() else float(bool(ok)))
        judged = shape_ok[sl][np.isfinite(shape_ok[sl])]
        win_shape.append(judged.mean() if len(judged) else np.nan)
        win_count.append(count_ok[sl].mean())
    return ClipScore(prompt, window, count, count_ok, shapes, iou, shape_ok, centre,
                     np.array([f.wrapped for f in info]), np.array(motion_ok), np.array(win_shape),
                     np.array(win_count, dtype=np.float64))


def score_clip(frames, prompt: str, speed: float = SPEED) -> ClipScore:
    """Score a short clip uint8 [F, H, W, 3] as one motion window (a model's own 8-frame window)."""
    return score_video(frames, prompt, window=max(len(frames), 3), speed=speed)
