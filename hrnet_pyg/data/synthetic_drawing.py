"""How one image of the synthetic re-ID dataset is drawn (:mod:`hrnet_pyg.data.synthetic`).

* Appearance models: :func:`draw_identity` (the stable look of an identity: skin, hair, clothes,
  pattern, bag, body proportions) and :func:`draw_camera` (a camera's scene, colour cast, light,
  scale, resolution, blur, noise and preferred viewpoint), each a pure function of the seed.
* Drawing primitives: :func:`draw_person` (the person as an RGBA layer, one body part at a time)
  and the camera response.
* :func:`render_image` and :func:`render_distractor`: one finished image.

Every random number comes from the generator passed in, in a fixed order, so that the images are
byte-identical for a seed (``tests/data/test_synthetic.py`` pins their digest).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

_DRAW_H, _DRAW_W = 256, 128  # drawing canvas; images are resized to (height, width) afterwards

Color = tuple[int, int, int]


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


@dataclass(frozen=True)
class _Body:
    """Where the parts of one drawn person go (canvas pixels): the pose of one image."""

    hp: float  # person height in pixels
    cx: float  # body centre line
    y_feet: float
    y0: float  # top of the head
    side: bool  # side view
    r_head: float
    y_sh: float  # shoulders
    y_hip: float
    sw: float  # half width at the shoulders
    hw: float  # half width at the hips
    arm_w: float
    leg_w: float
    arm_len: float
    foot_h: float
    stride: float
    swing: float


def _body(ident: Identity, rng: np.random.Generator, view: str, scale: float) -> _Body:
    """The pose of one image; draws the person's four random numbers from ``rng``."""
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
    return _Body(hp=hp, cx=cx, y_feet=y_feet, y0=y0, side=side, r_head=r_head, y_sh=y_sh, y_hip=y_hip,
                 sw=sw, hw=hw, arm_w=arm_w, leg_w=leg_w, arm_len=arm_len, foot_h=foot_h, stride=stride,
                 swing=swing)


def _draw_legs(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body) -> None:
    """Legs (skin under shorts and skirts), shoes and a skirt."""
    hp, cx, hw, y_hip, y_feet, side = b.hp, b.cx, b.hw, b.y_hip, b.y_feet, b.side
    lower_skin = ident.lower in ("shorts", "skirt")
    knee_t = 0.4 if ident.lower == "shorts" else 0.0
    for sgn in (-1, 1):
        hip = (cx + sgn * hw * 0.5, y_hip)
        foot = (cx + sgn * (hw * 0.45 + b.stride / 2), y_feet - b.foot_h)
        if lower_skin:
            _limb(draw, hip, foot, b.leg_w * 0.8, ident.skin)
            if knee_t:
                _limb(draw, hip, _lerp(hip, foot, knee_t), b.leg_w, ident.trousers)
        else:
            _limb(draw, hip, foot, b.leg_w, ident.trousers)
        fx = foot[0] + (sgn * 0.02 * hp if not side else 0.03 * hp)
        draw.ellipse([fx - 0.05 * hp, y_feet - 2 * b.foot_h, fx + 0.05 * hp, y_feet],
                     fill=ident.shoes + (255,))
    if ident.lower == "skirt":
        draw.polygon([(cx - hw, y_hip - 0.02 * hp), (cx + hw, y_hip - 0.02 * hp),
                      (cx + hw * 1.5, y_hip + 0.2 * hp), (cx - hw * 1.5, y_hip + 0.2 * hp)],
                     fill=ident.trousers + (255,))


def _draw_torso(layer: Image.Image, draw: ImageDraw.ImageDraw, ident: Identity, b: _Body, view: str) -> None:
    """The torso with its pattern (the pattern drawn through the torso's mask)."""
    hp, cx, sw, hw, y_sh, y_hip = b.hp, b.cx, b.sw, b.hw, b.y_sh, b.y_hip
    torso = [(cx - sw, y_sh), (cx + sw, y_sh), (cx + hw, y_hip + 0.02 * hp),
             (cx - hw, y_hip + 0.02 * hp)]
    draw.polygon(torso, fill=ident.shirt + (255,))
    pattern = ident.pattern
    if pattern == "logo" and view != "front":
        pattern = "plain"  # the chest print does not show from behind or the side
    if pattern == "plain":
        return
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


def _draw_arms(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body) -> None:
    """Arms (skin, then the sleeve over it) and a shoulder bag hanging from the far shoulder."""
    hp, cx, sw, y_sh, y_hip, arm_w, side = b.hp, b.cx, b.sw, b.y_sh, b.y_hip, b.arm_w, b.side
    arm_sides = (1,) if side else (-1, 1)
    for sgn in arm_sides:
        sh = (cx + sgn * (sw - arm_w * 0.4), y_sh + arm_w * 0.5)
        ang = b.swing * (sgn if not side else 1) + sgn * 0.08
        hand = (sh[0] + math.sin(ang) * b.arm_len, sh[1] + math.cos(ang) * b.arm_len)
        _limb(draw, sh, hand, arm_w * 0.85, ident.skin)
        _limb(draw, sh, _lerp(sh, hand, 0.92 if ident.long_sleeves else 0.4), arm_w,
              ident.shirt if ident.pattern != "twotone" else ident.shirt2)
        if ident.bag == "shoulder" and sgn == 1:
            bx, by = hand[0] - 0.01 * hp, y_hip - 0.03 * hp
            draw.line([(cx - sw * 0.8, y_sh), (bx, by)], fill=ident.bag_color + (255,),
                      width=max(1, int(0.015 * hp)))
            draw.rectangle([bx - 0.06 * hp, by, bx + 0.06 * hp, by + 0.1 * hp],
                           fill=ident.bag_color + (255,))


def _draw_backpack(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body, view: str) -> None:
    """A backpack over the torso: its body from the back, its straps from the front."""
    if ident.bag != "backpack":
        return
    hp, cx, sw, y_sh = b.hp, b.cx, b.sw, b.y_sh
    if view == "back":
        draw.rounded_rectangle([cx - sw * 0.8, y_sh + 0.02 * hp, cx + sw * 0.8,
                                y_sh + 0.27 * hp], radius=5, fill=ident.bag_color + (255,))
    elif view == "front":
        for sgn in (-1, 1):
            x = cx + sgn * sw * 0.55
            draw.line([(x, y_sh), (x, y_sh + 0.17 * hp)], fill=ident.bag_color + (255,),
                      width=max(1, int(0.02 * hp)))


def _draw_head(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body, view: str) -> None:
    """Neck, head, hair and cap (the face is hair from behind)."""
    hp, cx, y0, y_sh, r_head, side = b.hp, b.cx, b.y0, b.y_sh, b.r_head, b.side
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


def draw_person(ident: Identity, rng: np.random.Generator, view: str, scale: float) -> Image.Image:
    """An RGBA drawing-canvas-sized layer with the person, feet near the bottom.

    The parts are drawn back to front: a side view's backpack, legs, torso, arms, a backpack's
    front or back, head.
    """
    layer = Image.new("RGBA", (_DRAW_W, _DRAW_H), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    b = _body(ident, rng, view, scale)
    if ident.bag == "backpack" and b.side:  # seen whole from the side: it sticks out behind
        hp, cx, sw, y_sh = b.hp, b.cx, b.sw, b.y_sh
        draw.rounded_rectangle([cx - sw - 0.09 * hp, y_sh + 0.02 * hp, cx - sw + 0.02 * hp,
                                y_sh + 0.28 * hp], radius=4, fill=ident.bag_color + (255,))
    _draw_legs(draw, ident, b)
    _draw_torso(layer, draw, ident, b, view)
    _draw_arms(draw, ident, b)
    _draw_backpack(draw, ident, b, view)
    _draw_head(draw, ident, b, view)
    return layer


# --------------------------------------------------------------------------------------------
# the camera and the finished image
# --------------------------------------------------------------------------------------------
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

__all__ = [
    "Camera",
    "Identity",
    "draw_camera",
    "draw_identity",
    "draw_person",
    "render_distractor",
    "render_image",
]
