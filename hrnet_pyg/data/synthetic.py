"""A procedurally drawn re-ID dataset in Market-1501 format (the demo's and end-to-end tests' data).

Each identity has a stable appearance (skin and hair, hair style or cap, shirt and trouser
colours, a shirt pattern -- plain, stripes, chest logo, two-tone --, sleeve and leg length,
shoes, body proportions, an optional backpack or shoulder bag). Each camera has its own
background scene, colour cast, brightness, contrast, subject scale, resolution, blur, noise and
a preferred viewpoint. Each image adds pose jitter (stride, arm swing, horizontal shift, small
rotation, scale), a viewpoint (front / back / side: the logo only shows from the front, a
backpack mostly from the back), a random horizontal flip and, sometimes, an occluder.

So a camera changes every pixel of a person while identity lives in colours and layout of body
parts: raw pixels match the camera (background, light) more than the person, and a learned model
has something to learn. Everything is a pure function of the seed: the appearance of identity
``p`` depends only on ``(seed, p)``, the look of camera ``c`` only on ``(seed, c)``.

Output: ``root/{bounding_box_train,query,bounding_box_test}/PPPP_cCsS_FFFFFF_BB.jpg`` plus
``root/manifest.json`` recording the parameters; pid ``-1`` (junk) and ``0000`` (distractor)
images sit in the gallery like in Market-1501.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from hrnet_pyg.data.base import DatasetError, PathLike, ReIDDataset, parse_market_splits
from hrnet_pyg.runtime import progress as progress_of

# Bump when the drawing changes, so an old folder is regenerated rather than silently reused.
GENERATOR_VERSION = 1
_DRAW_H, _DRAW_W = 256, 128  # drawing canvas; images are resized to (height, width) afterwards

Color = tuple[int, int, int]


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of :func:`generate_synthetic_dataset` (all recorded in the manifest)."""

    num_train_ids: int = 60  # identities of bounding_box_train
    num_test_ids: int = 60  # identities of query + bounding_box_test (disjoint from train)
    num_cams: int = 6  # cameras, 1..9 (one digit in Market names)
    imgs_per_id: int = 12  # images per identity (train and test)
    min_cams_per_id: int = 2  # each identity is seen by a random subset of cameras
    max_cams_per_id: int = 4
    queries_per_id: int = 2  # query images per test identity, each from another camera
    num_distractors: int = 20  # pid 0000 gallery images (background / fragments)
    num_junk: int = 10  # pid -1 gallery images (dropped by the parser)
    height: int = 128  # saved image size
    width: int = 64
    occlusion_p: float = 0.15  # probability of an occluder per image
    jpeg_quality: int = 90
    seed: int = 0

    def validate(self) -> None:
        if self.num_train_ids < 1 or self.num_test_ids < 1:
            raise ValueError("num_train_ids and num_test_ids must be >= 1")
        if not 2 <= self.num_cams <= 9:
            raise ValueError(
                f"num_cams must lie in 2..9 (one-digit camera ids), got {self.num_cams}"
            )
        if not 1 <= self.min_cams_per_id <= min(self.max_cams_per_id, self.num_cams):
            raise ValueError("need 1 <= min_cams_per_id <= min(max_cams_per_id, num_cams)")
        if self.min_cams_per_id < 2:
            raise ValueError("min_cams_per_id must be >= 2 so every query has a cross-camera match")
        if self.queries_per_id < 1:
            raise ValueError("queries_per_id must be >= 1")
        if self.imgs_per_id < 2 * self.min_cams_per_id:
            raise ValueError(
                f"imgs_per_id={self.imgs_per_id} must be >= 2 * min_cams_per_id "
                f"({2 * self.min_cams_per_id}): each camera of a test identity needs a query "
                f"and a gallery image"
            )
        if self.num_train_ids + self.num_test_ids > 9999:
            raise ValueError("at most 9999 identities fit the 4-digit Market names")
        if self.height < 16 or self.width < 8:
            raise ValueError(f"image size {self.height}x{self.width} is too small")
        if self.num_distractors < 0 or self.num_junk < 0:
            raise ValueError("num_distractors and num_junk must be >= 0")
        if not 0.0 <= self.occlusion_p <= 1.0:
            raise ValueError("occlusion_p must lie in [0, 1]")


# --------------------------------------------------------------------------------------------
# appearance models
# --------------------------------------------------------------------------------------------

_SKIN = [(255, 220, 190), (240, 195, 160), (215, 165, 125), (180, 130, 90), (140, 95, 60),
         (100, 65, 40)]
_HAIR = [(20, 15, 10), (60, 40, 25), (110, 75, 40), (200, 170, 100), (150, 150, 150),
         (140, 60, 30)]
_TROUSERS = [(40, 60, 110), (25, 25, 30), (170, 150, 110), (90, 90, 95), (60, 80, 50),
             (200, 200, 205)]


def _hsv(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> Color:
    h = rng.uniform(0.0, 1.0)
    sat, val = rng.uniform(*s), rng.uniform(*v)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    r, g, b = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def _jitter(rng: np.random.Generator, c: Color, amount: int = 12) -> Color:
    r, g, b = (int(np.clip(x + rng.integers(-amount, amount + 1), 0, 255)) for x in c)
    return r, g, b


def _choice(rng: np.random.Generator, options: Sequence[str], p: Sequence[float]) -> str:
    return options[int(rng.choice(len(options), p=np.asarray(p) / np.sum(p)))]


@dataclass
class Identity:
    skin: Color
    hair: Color
    hair_style: str  # short | long | bald | cap
    cap: Color
    shirt: Color
    shirt2: Color
    pattern: str  # plain | hstripes | vstripes | logo | twotone
    stripe: float  # stripe period (fraction of torso height)
    long_sleeves: bool
    lower: str  # trousers | shorts | skirt
    trousers: Color
    shoes: Color
    bag: str  # none | backpack | shoulder
    bag_color: Color
    height: float  # relative body height
    width: float  # relative body width
    legs: float  # leg share of the body height


def draw_identity(seed: int, pid: int) -> Identity:
    """The stable appearance of identity ``pid`` (a function of ``(seed, pid)`` only)."""
    rng = np.random.default_rng([seed, 11, pid])
    shirt = _hsv(rng, (0.15, 0.95), (0.2, 0.95))
    trousers = (
        _jitter(rng, _TROUSERS[rng.integers(len(_TROUSERS))], 15)
        if rng.uniform() < 0.6
        else _hsv(rng, (0.2, 0.8), (0.15, 0.8))
    )
    return Identity(
        skin=_jitter(rng, _SKIN[rng.integers(len(_SKIN))], 10),
        hair=_jitter(rng, _HAIR[rng.integers(len(_HAIR))], 10),
        hair_style=_choice(rng, ["short", "long", "bald", "cap"], [0.45, 0.3, 0.05, 0.2]),
        cap=_hsv(rng, (0.3, 0.9), (0.2, 0.9)),
        shirt=shirt,
        shirt2=_hsv(rng, (0.0, 0.9), (0.1, 1.0)),
        pattern=_choice(
            rng, ["plain", "hstripes", "vstripes", "logo", "twotone"], [0.35, 0.2, 0.1, 0.2, 0.15]
        ),
        stripe=float(rng.uniform(0.12, 0.3)),
        long_sleeves=bool(rng.uniform() < 0.55),
        lower=_choice(rng, ["trousers", "shorts", "skirt"], [0.65, 0.2, 0.15]),
        trousers=trousers,
        shoes=_jitter(rng, [(20, 20, 20), (235, 235, 235), (120, 80, 50)][rng.integers(3)], 15)
        if rng.uniform() < 0.8
        else _hsv(rng, (0.4, 0.9), (0.3, 0.9)),
        bag=_choice(rng, ["none", "backpack", "shoulder"], [0.5, 0.25, 0.25]),
        bag_color=_hsv(rng, (0.1, 0.8), (0.1, 0.7)),
        height=float(rng.uniform(0.9, 1.04)),
        width=float(rng.uniform(0.85, 1.2)),
        legs=float(rng.uniform(0.44, 0.52)),
    )


@dataclass
class Camera:
    gains: np.ndarray  # per-channel colour cast
    brightness: float
    contrast: float
    scale: tuple[float, float]  # person height / image height
    blur: float  # Gaussian blur radius at the saved resolution
    lowres: float  # >1: captured at lower resolution and upscaled
    noise: float  # std of additive Gaussian noise (0-255 scale)
    view_p: np.ndarray  # probabilities of front / back / side
    scene: Image.Image  # panorama the backgrounds are cropped from


def draw_camera(seed: int, cam: int) -> Camera:
    """The look of camera ``cam`` (a function of ``(seed, cam)`` only)."""
    rng = np.random.default_rng([seed, 22, cam])
    return Camera(
        gains=np.exp(rng.normal(0.0, 0.13, size=3)).astype(np.float32),
        brightness=float(rng.uniform(0.65, 1.25)),
        contrast=float(rng.uniform(0.7, 1.1)),
        scale=(float(rng.uniform(0.72, 0.82)), float(rng.uniform(0.86, 0.96))),
        blur=float(rng.uniform(0.0, 1.0)),
        lowres=float(rng.uniform(1.0, 2.2)),
        noise=float(rng.uniform(1.5, 7.0)),
        view_p=rng.dirichlet([2.0, 2.0, 1.2]),
        scene=_draw_scene(rng),
    )


def _draw_scene(rng: np.random.Generator) -> Image.Image:
    """A wide background strip: wall with panels/windows, a floor, some clutter and texture."""
    h, w = _DRAW_H, _DRAW_W * 3
    wall, floor = _hsv(rng, (0.0, 0.5), (0.3, 0.9)), _hsv(rng, (0.0, 0.4), (0.2, 0.7))
    horizon = int(h * rng.uniform(0.55, 0.8))
    img = Image.new("RGB", (w, h), wall)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, horizon, w, h], fill=floor)
    x = int(rng.integers(0, 30))
    while x < w:  # panels, windows, doors, posts
        pw = int(rng.integers(15, 70))
        top = int(rng.integers(0, horizon // 2))
        draw.rectangle([x, top, x + pw, horizon - int(rng.integers(0, 30))],
                       fill=_jitter(rng, wall, 60))
        x += pw + int(rng.integers(5, 60))
    for _ in range(int(rng.integers(0, 4))):  # floor lines
        y = int(rng.integers(horizon, h))
        draw.line([0, y, w, y + int(rng.integers(-20, 20))], fill=_jitter(rng, floor, 40), width=2)
    arr = np.asarray(img, dtype=np.float32)
    # low-frequency shading + fine texture, so a background is not a flat colour
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    shade = 1 + 0.15 * np.sin(2 * math.pi * (xx * rng.uniform(0.5, 2) + rng.uniform()))
    shade = shade * (1 + 0.1 * (yy - 0.5) * rng.choice([-1, 1]))
    arr = arr * shade + rng.normal(0, 6, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------
# drawing one image
# --------------------------------------------------------------------------------------------


def _limb(draw: ImageDraw.ImageDraw, p0: tuple[float, float], p1: tuple[float, float],
          width: float, fill: Color) -> None:
    w = max(1, int(round(width)))
    draw.line([p0, p1], fill=fill + (255,), width=w)
    r = width / 2
    for px, py in (p0, p1):
        draw.ellipse([px - r, py - r, px + r, py + r], fill=fill + (255,))


def _lerp(p0: tuple[float, float], p1: tuple[float, float], t: float) -> tuple[float, float]:
    return p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t


def draw_person(ident: Identity, rng: np.random.Generator, view: str, scale: float) -> Image.Image:
    """An RGBA drawing-canvas-sized layer with the person, feet near the bottom."""
    layer = Image.new("RGBA", (_DRAW_W, _DRAW_H), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    hp = _DRAW_H * scale * ident.height  # person height in pixels
    cx = _DRAW_W / 2 + rng.normal(0, 0.05) * _DRAW_W
    y_feet = _DRAW_H * (0.5 + scale / 2) + rng.normal(0, 0.01) * _DRAW_H
    y0 = y_feet - hp
    side = view == "side"
    wf = ident.width * (0.62 if side else 1.0)
    r_head = 0.068 * hp
    y_sh = y0 + 0.17 * hp  # shoulders
    y_hip = y_feet - ident.legs * hp
    sw, hw = 0.125 * hp * wf, 0.095 * hp * wf  # half widths at shoulders / hips
    arm_w, leg_w = 0.05 * hp * ident.width, 0.07 * hp * ident.width
    arm_len, foot_h = 0.36 * hp, 0.035 * hp
    stride = rng.uniform(0.0, 0.22 if side else 0.09) * hp
    swing = rng.uniform(-0.5, 0.5) * (0.35 if side else 0.15)

    # back: a backpack's body seen whole (drawn first only in side view: it sticks out behind)
    if ident.bag == "backpack" and side:
        draw.rounded_rectangle([cx - sw - 0.09 * hp, y_sh + 0.02 * hp, cx - sw + 0.02 * hp,
                                y_sh + 0.28 * hp], radius=4, fill=ident.bag_color + (255,))

    # legs
    lower_skin = ident.lower in ("shorts", "skirt")
    knee_t = 0.4 if ident.lower == "shorts" else 0.0
    for sgn in (-1, 1):
        hip = (cx + sgn * hw * 0.5, y_hip)
        foot = (cx + sgn * (hw * 0.45 + stride / 2), y_feet - foot_h)
        if lower_skin:
            _limb(draw, hip, foot, leg_w * 0.8, ident.skin)
            if knee_t:
                _limb(draw, hip, _lerp(hip, foot, knee_t), leg_w, ident.trousers)
        else:
            _limb(draw, hip, foot, leg_w, ident.trousers)
        fx = foot[0] + (sgn * 0.02 * hp if not side else 0.03 * hp)
        draw.ellipse([fx - 0.05 * hp, y_feet - 2 * foot_h, fx + 0.05 * hp, y_feet],
                     fill=ident.shoes + (255,))
    if ident.lower == "skirt":
        draw.polygon([(cx - hw, y_hip - 0.02 * hp), (cx + hw, y_hip - 0.02 * hp),
                      (cx + hw * 1.5, y_hip + 0.2 * hp), (cx - hw * 1.5, y_hip + 0.2 * hp)],
                     fill=ident.trousers + (255,))

    # torso with its pattern (pattern drawn through the torso mask)
    torso = [(cx - sw, y_sh), (cx + sw, y_sh), (cx + hw, y_hip + 0.02 * hp),
             (cx - hw, y_hip + 0.02 * hp)]
    draw.polygon(torso, fill=ident.shirt + (255,))
    pattern = ident.pattern
    if pattern == "logo" and view != "front":
        pattern = "plain"  # the chest print does not show from behind or the side
    if pattern != "plain":
        mask = Image.new("L", layer.size, 0)
        ImageDraw.Draw(mask).polygon(torso, fill=255)
        pat = Image.new("L", layer.size, 0)
        pdraw = ImageDraw.Draw(pat)
        th = y_hip - y_sh
        if pattern == "hstripes":
            period = max(3.0, ident.stripe * th)
            y = y_sh
            while y < y_hip:
                pdraw.rectangle([0, y, _DRAW_W, y + period / 2], fill=255)
                y += period
        elif pattern == "vstripes":
            period = max(3.0, ident.stripe * th * 0.8)
            x = cx - sw
            while x < cx + sw:
                pdraw.rectangle([x, 0, x + period / 2, _DRAW_H], fill=255)
                x += period
        elif pattern == "logo":
            r = 0.28 * sw
            pdraw.ellipse([cx - r, y_sh + 0.25 * th - r, cx + r, y_sh + 0.25 * th + r], fill=255)
        elif pattern == "twotone":
            pdraw.rectangle([0, y_sh + 0.5 * th, _DRAW_W, _DRAW_H], fill=255)
        layer.paste(ident.shirt2 + (255,), (0, 0), ImageChops.multiply(mask, pat))

    # arms (sleeve, then skin)
    arm_sides = (1,) if side else (-1, 1)
    for sgn in arm_sides:
        sh = (cx + sgn * (sw - arm_w * 0.4), y_sh + arm_w * 0.5)
        ang = swing * (sgn if not side else 1) + sgn * 0.08
        hand = (sh[0] + math.sin(ang) * arm_len, sh[1] + math.cos(ang) * arm_len)
        _limb(draw, sh, hand, arm_w * 0.85, ident.skin)
        _limb(draw, sh, _lerp(sh, hand, 0.92 if ident.long_sleeves else 0.4), arm_w,
              ident.shirt if ident.pattern != "twotone" else ident.shirt2)
        if ident.bag == "shoulder" and sgn == 1:
            bx, by = hand[0] - 0.01 * hp, y_hip - 0.03 * hp
            draw.line([(cx - sw * 0.8, y_sh), (bx, by)], fill=ident.bag_color + (255,),
                      width=max(1, int(0.015 * hp)))
            draw.rectangle([bx - 0.06 * hp, by, bx + 0.06 * hp, by + 0.1 * hp],
                           fill=ident.bag_color + (255,))

    if ident.bag == "backpack":
        if view == "back":
            draw.rounded_rectangle([cx - sw * 0.8, y_sh + 0.02 * hp, cx + sw * 0.8,
                                    y_sh + 0.27 * hp], radius=5, fill=ident.bag_color + (255,))
        elif view == "front":
            for sgn in (-1, 1):
                x = cx + sgn * sw * 0.55
                draw.line([(x, y_sh), (x, y_sh + 0.17 * hp)], fill=ident.bag_color + (255,),
                          width=max(1, int(0.02 * hp)))

    # neck and head
    draw.rectangle([cx - 0.025 * hp, y0 + 1.8 * r_head, cx + 0.025 * hp, y_sh + 2],
                   fill=ident.skin + (255,))
    hx, hy = cx + (0.02 * hp if side else 0.0), y0 + r_head
    if ident.hair_style == "long":
        draw.rectangle([hx - r_head * 1.05, hy, hx + r_head * 1.05,
                        y_sh + (0.1 * hp if view == "back" else 0.02 * hp)],
                       fill=ident.hair + (255,))
    face = ident.hair if view == "back" and ident.hair_style != "bald" else ident.skin
    draw.ellipse([hx - r_head * 0.85, hy - r_head, hx + r_head * 0.85, hy + r_head],
                 fill=face + (255,))
    top = ident.cap if ident.hair_style == "cap" else ident.hair
    if ident.hair_style != "bald":
        draw.chord([hx - r_head * 0.9, hy - r_head * 1.05, hx + r_head * 0.9, hy + r_head * 0.9],
                   180, 360, fill=top + (255,))
    if ident.hair_style == "cap" and view != "back":
        d = 1 if view == "front" else 1.6
        draw.rectangle([hx - r_head * d * 0.9, hy - 0.15 * r_head, hx + r_head * 0.9 * d,
                        hy + 0.05 * r_head], fill=top + (255,))
    return layer


def _occlude(img: Image.Image, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(img)
    color = _hsv(rng, (0.0, 0.8), (0.1, 0.9))
    if rng.uniform() < 0.5:  # something low in front: car, bench, bin
        top = int(_DRAW_H * rng.uniform(0.6, 0.8))
        x0 = int(rng.uniform(-0.3, 0.4) * _DRAW_W)
        draw.rounded_rectangle([x0, top, x0 + int(rng.uniform(0.6, 1.2) * _DRAW_W), _DRAW_H + 10],
                               radius=8, fill=color)
    else:  # a pole or another pedestrian's shoulder at the side
        w = int(rng.uniform(0.1, 0.3) * _DRAW_W)
        x0 = int(rng.choice([rng.uniform(-0.05, 0.15), rng.uniform(0.6, 0.85)]) * _DRAW_W)
        draw.rectangle([x0, int(rng.uniform(-0.1, 0.3) * _DRAW_H), x0 + w, _DRAW_H], fill=color)


def _background(cam: Camera, rng: np.random.Generator) -> Image.Image:
    x0 = int(rng.integers(0, cam.scene.width - _DRAW_W))
    bg = cam.scene.crop((x0, 0, x0 + _DRAW_W, _DRAW_H))
    if rng.uniform() < 0.5:
        bg = bg.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return bg


def _finish(img: Image.Image, cam: Camera, rng: np.random.Generator,
            size: tuple[int, int]) -> Image.Image:
    """Camera response: resolution, blur, colour cast, brightness, contrast, noise."""
    h, w = size
    lw, lh = max(4, int(w / cam.lowres)), max(8, int(h / cam.lowres))
    img = img.resize((lw, lh), Image.Resampling.BILINEAR, reducing_gap=2.0)
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    if cam.blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(cam.blur))
    arr = np.asarray(img, dtype=np.float32)
    bright = cam.brightness * rng.uniform(0.92, 1.08)
    mean = arr.mean()
    arr = (arr - mean) * cam.contrast + mean
    arr = arr * cam.gains * bright + rng.normal(0, cam.noise, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render_image(
    ident: Identity,
    cam: Camera,
    rng: np.random.Generator,
    size: tuple[int, int],
    occlusion_p: float,
) -> Image.Image:
    """One image of ``ident`` seen by ``cam`` (``rng`` carries the per-image randomness)."""
    view = ["front", "back", "side"][int(rng.choice(3, p=cam.view_p))]
    scale = rng.uniform(*cam.scale)
    person = draw_person(ident, rng, view, scale)
    angle = rng.normal(0, 2.5)
    person = person.rotate(angle, resample=Image.Resampling.BILINEAR,
                           center=(_DRAW_W / 2, _DRAW_H * 0.6))
    if rng.uniform() < 0.5:
        person = person.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = _background(cam, rng)
    img.paste(person, (0, 0), person)
    if rng.uniform() < occlusion_p:
        _occlude(img, rng)
    return _finish(img, cam, rng, size)


def render_distractor(seed: int, cam: Camera, rng: np.random.Generator,
                      size: tuple[int, int], junk: bool) -> Image.Image:
    """pid 0 (distractor): background or a zoomed body fragment; pid -1 (junk): clutter."""
    img = _background(cam, rng)
    if junk or rng.uniform() < 0.4:
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.uniform(0, _DRAW_W), rng.uniform(0, _DRAW_H)
            r = rng.uniform(8, 40)
            draw.ellipse([x - r, y - r * 2, x + r, y + r * 2], fill=_hsv(rng, (0, 0.8), (0.1, 0.9)))
    else:  # a badly framed box around some unknown person
        stranger = draw_identity(seed, 100_000 + int(rng.integers(1_000_000)))
        person = draw_person(stranger, rng, "front", rng.uniform(1.3, 2.0))
        dy = int(rng.uniform(-0.5, 0.3) * _DRAW_H)
        img.paste(person, (int(rng.uniform(-0.3, 0.3) * _DRAW_W), dy), person)
    return _finish(img, cam, rng, size)


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------


@dataclass
class _Job:
    split: str
    pid: int  # Market pid (-1 junk, 0 distractor)
    cam: int  # 1-based
    serial: int


def _plan(cfg: SyntheticConfig) -> list[_Job]:
    """Which image goes where: cameras per identity, query/gallery assignment."""
    rng = np.random.default_rng([cfg.seed, 33])
    jobs: list[_Job] = []
    serial = 0
    all_pids = list(range(1, cfg.num_train_ids + cfg.num_test_ids + 1))
    for pid in all_pids:
        is_test = pid > cfg.num_train_ids
        # at least two images per camera for test ids (a query and a gallery image)
        base = 2 if is_test else 1
        max_cams = min(cfg.max_cams_per_id, cfg.num_cams, cfg.imgs_per_id // base)
        n_cams = int(rng.integers(cfg.min_cams_per_id, max(cfg.min_cams_per_id, max_cams) + 1))
        cams = sorted(int(c) + 1 for c in rng.choice(cfg.num_cams, size=n_cams, replace=False))
        counts = {c: base for c in cams}
        for c in rng.choice(cams, size=cfg.imgs_per_id - base * n_cams):
            counts[int(c)] += 1
        query_cams = set(
            int(c) for c in rng.choice(cams, size=min(cfg.queries_per_id, n_cams), replace=False)
        ) if is_test else set()
        for c in cams:
            for k in range(counts[c]):
                if not is_test:
                    split = "bounding_box_train"
                else:
                    split = "query" if (k == 0 and c in query_cams) else "bounding_box_test"
                jobs.append(_Job(split, pid, c, serial))
                serial += 1
    for pid, n in ((0, cfg.num_distractors), (-1, cfg.num_junk)):
        for _ in range(n):
            jobs.append(_Job("bounding_box_test", pid, int(rng.integers(1, cfg.num_cams + 1)),
                             serial))
            serial += 1
    return jobs


def _file_name(job: _Job) -> str:
    pid = "-1" if job.pid == -1 else f"{job.pid:04d}"
    seq = 1 + job.serial % 6
    return f"{pid}_c{job.cam}s{seq}_{job.serial * 25:06d}_{1 + job.serial % 3:02d}.jpg"


def generate_synthetic_dataset(
    root: str | os.PathLike[str],
    *,
    num_train_ids: int = 60,
    num_test_ids: int = 60,
    num_cams: int = 6,
    imgs_per_id: int = 12,
    min_cams_per_id: int = 2,
    max_cams_per_id: int = 4,
    queries_per_id: int = 2,
    num_distractors: int = 20,
    num_junk: int = 10,
    height: int = 128,
    width: int = 64,
    occlusion_p: float = 0.15,
    jpeg_quality: int = 90,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a Market-1501-format folder of drawn pedestrians to ``root``; return ``root``.

    ``root`` receives ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` and
    ``manifest.json``. When ``root/manifest.json`` already records the same parameters (and
    generator version) nothing is drawn. A folder with another manifest is replaced; a non-empty
    folder without manifest is never touched (error). Images are written to a temporary sibling
    folder and moved into place at the end, so an interrupted run leaves no half dataset.

    With the defaults: 60 train ids x 12 images (720), 60 test ids with 2 queries each (120
    query, 600 + 20 distractor + 10 junk gallery images), 6 cameras, 128x64 JPEGs.
    """
    cfg = SyntheticConfig(
        num_train_ids=num_train_ids, num_test_ids=num_test_ids, num_cams=num_cams,
        imgs_per_id=imgs_per_id, min_cams_per_id=min_cams_per_id,
        max_cams_per_id=max_cams_per_id, queries_per_id=queries_per_id,
        num_distractors=num_distractors, num_junk=num_junk, height=height, width=width,
        occlusion_p=occlusion_p, jpeg_quality=jpeg_quality, seed=seed,
    )
    cfg.validate()
    root = Path(root).expanduser()
    params = asdict(cfg)
    if root.exists():
        if (root / "manifest.json").is_file():
            if not overwrite and _manifest_matches(root, params):
                return root
        elif any(root.iterdir()):
            raise DatasetError(
                f"synthetic: {root} exists, is not empty and has no manifest.json, so it was not "
                f"written by this generator; refusing to overwrite it (remove it or pick another "
                f"root)"
            )

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        counts = _write_images(cfg, tmp, progress)
        manifest = {
            "generator": "hrnet_pyg.data.synthetic",
            "version": GENERATOR_VERSION,
            "params": params,
            "counts": counts,
            "digest": images_digest(tmp),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        # another process (e.g. a second DDP rank) may have finished the same job meanwhile
        if not overwrite and _manifest_matches(root, params):
            shutil.rmtree(tmp, ignore_errors=True)
            return root
        if root.exists():
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            if _manifest_matches(root, params):
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def images_digest(root: str | os.PathLike[str]) -> str:
    """SHA-256 over every image under ``root``: its relative path and bytes, in sorted path order.

    Two folders with the same digest hold byte-identical images under the same names, whatever
    order the file system lists them in; the demo prints it so that a user can tell a data
    difference from a training difference.
    """
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.jpg"), key=lambda q: q.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def _manifest_matches(root: Path, params: dict[str, object]) -> bool:
    try:
        old = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return old.get("params") == params and old.get("version") == GENERATOR_VERSION


def _write_images(cfg: SyntheticConfig, out: Path, progress: bool) -> dict[str, int]:
    size = (cfg.height, cfg.width)
    cams = {c: draw_camera(cfg.seed, c) for c in range(1, cfg.num_cams + 1)}
    idents: dict[int, Identity] = {}
    counts: dict[str, int] = {}
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (out / split).mkdir()
    jobs = _plan(cfg)
    for job in progress_of(jobs, "drawing synthetic re-ID images", show=progress, unit="images", leave=True):
        rng = np.random.default_rng([cfg.seed, 44, job.serial])
        if job.pid > 0:
            if job.pid not in idents:
                idents[job.pid] = draw_identity(cfg.seed, job.pid)
            img = render_image(idents[job.pid], cams[job.cam], rng, size,
                               cfg.occlusion_p)
        else:
            img = render_distractor(cfg.seed, cams[job.cam], rng, size, junk=job.pid == -1)
        img.save(out / job.split / _file_name(job), quality=cfg.jpeg_quality)
        counts[job.split] = counts.get(job.split, 0) + 1
    return counts


# ---------------------------------------------------------------------------- the dataset
class SyntheticReID(ReIDDataset):
    """Procedurally drawn pedestrians in Market-1501 format (see :mod:`hrnet_pyg.data.synthetic`).

    Generated into ``root/synthetic`` on first use (a ``manifest.json`` records the generator
    parameters; a matching manifest means the images are reused), then parsed with the
    Market-1501 parser. Keyword arguments go to :func:`generate_synthetic_dataset`.
    """

    name = "synthetic"

    def __init__(self, root: PathLike, verify: bool = False, **kwargs: Any) -> None:
        root = Path(root).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        data_dir = generate_synthetic_dataset(root / "synthetic", **kwargs)
        manifest = json.loads((data_dir / "manifest.json").read_text())
        self.params: dict[str, Any] = manifest["params"]
        # a manifest without a digest (written by an older release): computed from the images
        self.digest: str = manifest.get("digest") or images_digest(data_dir)
        self.data_dir = str(data_dir)
        train, query, gallery = parse_market_splits(
            data_dir, max_camid=int(self.params["num_cams"]), dataset=self.name
        )
        super().__init__(train, query, gallery, root=data_dir)
        if verify:
            self.verify_images()


__all__ = [
    "GENERATOR_VERSION",
    "SyntheticConfig",
    "SyntheticReID",
    "draw_camera",
    "draw_identity",
    "generate_synthetic_dataset",
    "images_digest",
    "render_image",
]
