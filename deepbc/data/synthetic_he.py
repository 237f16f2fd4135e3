"""The synthetic H&E painter: deterministic micrograph-like images of breast (and TMA) tissue.

Optical densities of haematoxylin (nuclei, purple-blue) and eosin (stroma and cytoplasm, pink) are
painted on a canvas and turned into RGB with the Beer-Lambert law. Each style (a BreakHis subtype
code or a TMA class) has its own tissue architecture (nuclear size, density, elongation,
pleomorphism and arrangement); malignant styles have larger, denser, more irregular nuclei. Each
patient gets its own stain vectors, stain amounts and brightness, and that variation is larger than
any colour difference between styles, so colour alone does not give the class away. The scale sets
the magnification: at 400X nuclei are larger and fewer than at 40X.

``paint`` is a pure function of its arguments; the demo (deepbc.data.demo, which lays the images out as
BreakHis and TMA datasets) and the benchmarks (deepbc.bench) both draw with it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Scale (pixels per unit) per magnification. Compressed: the true 10x from 40X to 400X would make
# 40X nuclei sub-pixel at demo size.
MAG_SCALE = {40: 0.6, 100: 1.0, 200: 1.45, 400: 2.1}
# The image width at which one unit (about one benign nuclear radius) is 1.6 x scale pixels; a
# wider image shows the same field of view with more pixels.
REFERENCE_WIDTH = 112
SUPERSAMPLE = 2  # paint at twice the size, then downsample: smooth nuclear edges
NUCLEAR_DENSITY = 0.6  # haematoxylin optical density of a typical nucleus

# Optical-density vectors (RGB) of haematoxylin and eosin: the reference stain matrix of
# Macenko et al. (2009), which gives the pinker eosin of real slides than Ruifrok's.
_H_VECTOR = np.array([0.5626, 0.7201, 0.4062])
_E_VECTOR = np.array([0.2159, 0.8012, 0.5581])


def paint(style: str, scale: float, size: tuple[int, int], seed: int, identity: str, patient: str,
          supersample: int = SUPERSAMPLE) -> Image.Image:
    """Draw one image (RGB, ``size`` = (width, height)); a pure function of its arguments.

    ``style``: a key of STYLES; ``scale``: pixels per unit at REFERENCE_WIDTH (MAG_SCALE for a
    magnification); ``identity`` seeds the drawing, ``patient`` the stain and per-patient
    morphology; ``supersample``: painting resolution factor (1 is enough when nuclei are many
    pixels across, as at BreakHis' 700x460).
    """
    width, height = size
    rng = rng_for(seed, "image", identity)
    canvas = _Canvas(rng, width * supersample, height * supersample,
                     unit=1.6 * scale * supersample * width / REFERENCE_WIDTH,
                     morph=_patient_morphology(seed, patient), supersample=supersample)
    STYLES[style](canvas)
    haem, eosin = canvas.concentrations()
    rgb = _stain(seed, patient).apply(haem, eosin, rng)
    image = Image.fromarray(rgb, "RGB")
    return image.resize((width, height), Image.Resampling.LANCZOS)


def rng_for(seed: int, *keys) -> np.random.Generator:
    """A generator seeded by the seed and a stable digest of ``keys`` (not Python's salted hash)."""
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return np.random.default_rng([int(seed), *np.frombuffer(digest[:16], dtype="<u4").tolist()])


# --------------------------------------------------------------------------- stain

@dataclass(frozen=True)
class _Stain:
    h_vector: np.ndarray
    e_vector: np.ndarray
    h_amount: float
    e_amount: float
    background: np.ndarray  # RGB of glass, 0..255

    def apply(self, haem: np.ndarray, eosin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Small per-image drift on top of the patient's stain (section thickness, focus).
        h = self.h_amount * math.exp(rng.normal(0.0, 0.05))
        e = self.e_amount * math.exp(rng.normal(0.0, 0.05))
        od = (h * haem)[..., None] * self.h_vector + (e * eosin)[..., None] * self.e_vector
        rgb = self.background * np.exp(-math.log(10.0) * od)
        rgb += rng.normal(0.0, 2.0, rgb.shape)  # sensor noise
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _stain(seed: int, patient: str) -> _Stain:
    """The patient's stain: hue (vectors), saturation (amounts) and brightness (glass colour)."""
    rng = rng_for(seed, "stain", patient)

    def vector(base):
        v = np.abs(base * np.exp(rng.normal(0.0, 0.08, 3)) + rng.normal(0.0, 0.02, 3))
        return v / np.linalg.norm(v)

    h_vector, e_vector = vector(_H_VECTOR), vector(_E_VECTOR)
    brightness = 245.0 * math.exp(rng.normal(0.0, 0.05))
    background = np.clip(brightness + rng.normal(0.0, 4.0, 3), 170.0, 255.0)
    return _Stain(h_vector, e_vector, h_amount=math.exp(rng.normal(0.0, 0.25)),
                  e_amount=math.exp(rng.normal(0.0, 0.3)), background=background)


def _patient_morphology(seed: int, patient: str) -> dict:
    """Per-patient deviation of nuclear size and cell density: patients differ beyond their stain."""
    rng = rng_for(seed, "morphology", patient)
    return {"size": math.exp(rng.normal(0.0, 0.08)), "density": math.exp(rng.normal(0.0, 0.08))}


# --------------------------------------------------------------------------- canvas

class _Canvas:
    """Haematoxylin and eosin concentration maps at canvas resolution, plus nuclei to paint."""

    def __init__(self, rng: np.random.Generator, w: int, h: int, unit: float, morph: dict, supersample: int):
        self.rng, self.w, self.h, self.u, self.morph = rng, w, h, unit, morph
        self.supersample = supersample
        self.eosin = np.zeros((h, w), np.float64)
        self.haem = np.zeros((h, w), np.float64)
        self.space = Image.new("F", (w, h), 0.0)    # 1 where there is no tissue (lumen, cleft)
        self.cyto = Image.new("F", (w, h), 0.0)     # eosin of epithelial cytoplasm where > 0
        self.nuclei_img = Image.new("F", (w, h), 0.0)
        self.chromatin = 0.3
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float64)

    # ---- fields
    def noise(self, cell_units: float) -> np.ndarray:
        """Smooth Gaussian noise (unit variance) with features about ``cell_units`` across."""
        cell = max(cell_units * self.u, 1.5)
        gh, gw = math.ceil(self.h / cell) + 3, math.ceil(self.w / cell) + 3
        grid = Image.fromarray(self.rng.standard_normal((gh, gw)).astype(np.float32), "F")
        big = np.asarray(grid.resize((round(gw * cell), round(gh * cell)), Image.Resampling.BICUBIC),
                         dtype=np.float64)
        off = round(1.5 * cell)
        field = big[off:off + self.h, off:off + self.w]
        return (field - field.mean()) / (field.std() + 1e-9)

    def streaks(self, along_units: float, across_units: float, angle: float) -> np.ndarray:
        """Smooth noise stretched along ``angle``: collagen fibre bundles (unit variance)."""
        side = int(math.hypot(self.w, self.h)) + 4
        gx = max(int(side / max(along_units * self.u, 1.5)), 1) + 3
        gy = max(int(side / max(across_units * self.u, 1.5)), 1) + 3
        grid = Image.fromarray(self.rng.standard_normal((gy, gx)).astype(np.float32), "F")
        big = grid.resize((side, side), Image.Resampling.BICUBIC).rotate(math.degrees(angle),
                                                                          Image.Resampling.BILINEAR)
        x0, y0 = (side - self.w) // 2, (side - self.h) // 2
        field = np.asarray(big, dtype=np.float64)[y0:y0 + self.h, x0:x0 + self.w]
        return (field - field.mean()) / (field.std() + 1e-9)

    def stroma(self, density: float, fibre: float = 0.5, angle: float | None = None):
        """Collagen: eosin in wavy fibre bundles, with a few loose (pale) gaps."""
        angle = self.rng.uniform(0, math.pi) if angle is None else angle
        bundles = self.streaks(9.0, 1.0, angle) + 0.6 * self.streaks(5.0, 0.6, angle + self.rng.normal(0, 0.3))
        bundles = np.clip(0.55 + 0.3 * bundles, 0.0, 1.0)
        grain = self.noise(0.7)
        self.eosin += density * (1 - fibre + fibre * bundles) * (1 + 0.1 * grain) * (1 + 0.15 * self.noise(12))
        self.haem += 0.03

    def sample(self, field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xi = np.clip(np.rint(x).astype(int), 0, self.w - 1)
        yi = np.clip(np.rint(y).astype(int), 0, self.h - 1)
        return field[yi, xi]

    def space_array(self) -> np.ndarray:
        return np.asarray(self.space, dtype=np.float64)

    # ---- point patterns (canvas pixels)
    def hex_points(self, spacing_units: float, jitter: float = 0.25):
        """A jittered hexagonal lattice of random orientation covering the canvas (plus a margin)."""
        s = spacing_units * self.u / math.sqrt(self.morph["density"])
        reach = math.hypot(self.w, self.h) / 2 + 2 * s
        n = int(reach / s) + 1
        i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1))
        x = (i + 0.5 * (j % 2)) * s
        y = j * s * math.sqrt(3) / 2
        a = self.rng.uniform(0, 2 * math.pi)
        cx = self.w / 2 + x * math.cos(a) - y * math.sin(a) + self.rng.uniform(0, s)
        cy = self.h / 2 + x * math.sin(a) + y * math.cos(a) + self.rng.uniform(0, s)
        cx = cx.ravel() + self.rng.normal(0, jitter * s, cx.size)
        cy = cy.ravel() + self.rng.normal(0, jitter * s, cy.size)
        keep = (cx > -s) & (cx < self.w + s) & (cy > -s) & (cy < self.h + s)
        return cx[keep], cy[keep]

    def uniform_points(self, per_area_units: float):
        """Poisson points, one per ``per_area_units`` square units on average."""
        area = (self.w + 4 * self.u) * (self.h + 4 * self.u) / self.u ** 2
        n = self.rng.poisson(area / per_area_units * self.morph["density"])
        return (self.rng.uniform(-2 * self.u, self.w + 2 * self.u, n),
                self.rng.uniform(-2 * self.u, self.h + 2 * self.u, n))

    def curve(self, length_units: float, step_units: float = 1.0, turn: float = 0.08, start=None, angle=None):
        """A smooth random-walk polyline: points (N, 2) and tangent angles (N,)."""
        x, y = start if start is not None else (self.rng.uniform(0, self.w), self.rng.uniform(0, self.h))
        a = self.rng.uniform(0, 2 * math.pi) if angle is None else angle
        n = max(int(length_units / step_units), 2)
        da = np.cumsum(self.rng.normal(0, turn, n))
        angles = a + da
        step = step_units * self.u
        xs = x + np.concatenate([[0], np.cumsum(step * np.cos(angles[:-1]))])
        ys = y + np.concatenate([[0], np.cumsum(step * np.sin(angles[:-1]))])
        return np.stack([xs, ys], 1), angles

    def curve_through_canvas(self, length_units: float, turn: float = 0.06):
        """A curve whose middle lies inside the canvas, so it is always visible."""
        pts, ang = self.curve(length_units, turn=turn, start=(0.0, 0.0))
        mid = len(pts) // 2
        target = np.array([self.rng.uniform(0.2, 0.8) * self.w, self.rng.uniform(0.2, 0.8) * self.h])
        return pts - pts[mid] + target, ang

    def along(self, pts: np.ndarray, angles: np.ndarray, spacing_units: float, offset_units: float):
        """Points spaced along a polyline, shifted sideways by ``offset_units``; with the tangent angles."""
        seg = np.hypot(*np.diff(pts, axis=0).T)
        arc = np.concatenate([[0], np.cumsum(seg)])
        s = np.arange(0, arc[-1], spacing_units * self.u / math.sqrt(self.morph["density"]))
        s = s + self.rng.uniform(0, spacing_units * self.u)
        s = s[s < arc[-1]]
        x = np.interp(s, arc, pts[:, 0])
        y = np.interp(s, arc, pts[:, 1])
        a = np.interp(s, arc, np.unwrap(angles))
        return x - np.sin(a) * offset_units * self.u, y + np.cos(a) * offset_units * self.u, a

    # ---- painting
    def line(self, image: Image.Image, pts: np.ndarray, width_units: float, value: float):
        ImageDraw.Draw(image).line([tuple(p) for p in pts.tolist()], fill=value,
                                   width=max(int(round(width_units * self.u)), 1), joint="curve")

    def ellipses(self, image: Image.Image, x, y, rx, ry, theta, value):
        draw = ImageDraw.Draw(image)
        values = np.broadcast_to(np.asarray(value, dtype=np.float64), np.shape(x))
        polys = _ellipse_polygons(x, y, rx, ry, theta, np.zeros((len(x), 16)))
        for poly, v in zip(polys, values.tolist()):
            draw.polygon(poly, fill=v)

    def nuclei(self, x, y, r: float, cv: float = 0.1, elong: float = 1.3, elong_cv: float = 0.15,
               theta=None, dark: float = 0.9, dark_cv: float = 0.1, irregular: float = 0.05,
               cyto: tuple[float, float] | None = None):
        """Paint nuclei of mean radius ``r`` units at (x, y) canvas pixels.

        ``cv``: size variation (pleomorphism); ``elong``: major/minor axis ratio; ``theta``: major axis
        angle (random if None); ``dark``: haematoxylin concentration; ``irregular``: contour
        roughness; ``cyto``: (radius factor, eosin) of a cytoplasm halo painted beneath.
        """
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        n = x.size
        if n == 0:
            return
        rng = self.rng
        radius = r * self.u * self.morph["size"] * np.exp(rng.normal(0, cv, n))
        e = np.maximum(elong * np.exp(rng.normal(0, elong_cv, n)), 1.0)
        rx, ry = radius * np.sqrt(e), radius / np.sqrt(e)
        theta = rng.uniform(0, math.pi, n) if theta is None else np.broadcast_to(theta, (n,))
        darkness = np.maximum(dark * np.exp(rng.normal(0, dark_cv, n)), 0.2)
        rough = rng.normal(0, irregular, (n, 16))
        rough = (rough + np.roll(rough, 1, 1) + np.roll(rough, -1, 1)) / 1.5
        if cyto is not None:
            factor, e_value = cyto
            self.ellipses(self.cyto, x, y, radius * factor, radius * factor, theta, e_value)
        draw = ImageDraw.Draw(self.nuclei_img)
        for poly, v in zip(_ellipse_polygons(x, y, rx, ry, theta, rough), darkness.tolist()):
            draw.polygon(poly, fill=v)

    def concentrations(self):
        space = np.clip(self.space_array(), 0, 1)
        cyto = np.asarray(self.cyto, dtype=np.float64)
        eosin = np.where(cyto > 0, cyto, self.eosin)
        haem = self.haem + 0.3 * cyto
        # Nuclei never sit in a lumen: cut them at its edge.
        nuclei = _blur(np.asarray(self.nuclei_img, dtype=np.float64) * (1 - space), 0.35 * self.supersample)
        nuclei *= NUCLEAR_DENSITY
        grain = self.rng.random((self.h, self.w))
        nuclei *= 1 - self.chromatin + 2 * self.chromatin * _blur(grain, 0.6)
        return haem * (1 - space) + nuclei, eosin * (1 - space)


def _ellipse_polygons(x, y, rx, ry, theta, rough):
    k = rough.shape[1]
    phi = np.linspace(0, 2 * math.pi, k, endpoint=False)
    m = 1 + rough
    ex = rx[:, None] * np.cos(phi) * m
    ey = ry[:, None] * np.sin(phi) * m
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    px = x[:, None] + ex * c - ey * s
    py = y[:, None] + ex * s + ey * c
    return [list(zip(a, b)) for a, b in zip(px.tolist(), py.tolist())]


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    r = max(1, int(3 * sigma + 0.5))
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    p = np.pad(a, r, mode="reflect")
    h, w = a.shape
    rows = sum(k[i] * p[i:i + h, :] for i in range(2 * r + 1))
    return sum(k[i] * rows[:, i:i + w] for i in range(2 * r + 1))


# --------------------------------------------------------------------------- architectures
# Lengths are in units (about one benign nuclear radius); the canvas converts them to pixels.

def _glands(c: _Canvas, spacing, radius, lumen, elong, r_nuc, gland_mask=None):
    """Round or compressed glands: a ring of epithelial nuclei around a lumen, and myoepithelium outside."""
    gx, gy = c.hex_points(spacing, jitter=0.18)
    if gland_mask is not None:
        keep = c.sample(gland_mask, gx, gy)
        gx, gy = gx[keep], gy[keep]
    for x0, y0 in zip(gx.tolist(), gy.tolist()):
        e = elong * math.exp(c.rng.normal(0, 0.15))
        a = c.rng.uniform(0, math.pi)
        size = radius * math.exp(c.rng.normal(0, 0.1))
        rx, ry = size * math.sqrt(e) * c.u, size / math.sqrt(e) * c.u
        c.ellipses(c.cyto, np.array([x0]), np.array([y0]), np.array([rx * 1.15]), np.array([ry * 1.15]),
                   np.array([a]), 0.2)
        if lumen > 0:
            c.ellipses(c.space, np.array([x0]), np.array([y0]), np.array([rx * lumen]), np.array([ry * lumen]),
                       np.array([a]), 1.0)
        for ring, rn, el, tangential, step in ((0.72, r_nuc, 1.5, False, 2.1), (1.12, 0.7, 2.6, True, 3.0)):
            perimeter = math.pi * (rx + ry) * ring
            n = max(int(perimeter / (step * c.u)), 4)
            t = np.linspace(0, 2 * math.pi, n, endpoint=False) + c.rng.uniform(0, 2 * math.pi)
            px, py = rx * ring * np.cos(t), ry * ring * np.sin(t)
            x = x0 + px * math.cos(a) - py * math.sin(a)
            y = y0 + px * math.sin(a) + py * math.cos(a)
            radial = np.arctan2(y - y0, x - x0)
            c.nuclei(x, y, rn, cv=0.08, elong=el, theta=radial + (math.pi / 2 if tangential else 0.0),
                     dark=0.85)


def _spindles(c: _Canvas, per_area, r=0.8, elong=3.0, dark=0.8, avoid=None):
    """Scattered stromal cells (fibroblasts) of random orientation, kept out of ``avoid`` (> 0.5)."""
    x, y = c.uniform_points(per_area)
    if avoid is not None:
        keep = c.sample(avoid, x, y) < 0.5
        x, y = x[keep], y[keep]
    c.nuclei(x, y, r, cv=0.12, elong=elong, elong_cv=0.2, dark=dark)


def _epithelial_lining(c: _Canvas, pts, ang, offsets, spacing, r, elong, dark, cv=0.1, irregular=0.05):
    """Nuclei lining a polyline at the given sideways offsets, long axis across the line."""
    for off in offsets:
        x, y, a = c.along(pts, ang, spacing, off)
        x = x + c.rng.normal(0, 0.25 * c.u, x.size)
        y = y + c.rng.normal(0, 0.25 * c.u, y.size)
        c.nuclei(x, y, r, cv=cv, elong=elong, theta=a + math.pi / 2, dark=dark, irregular=irregular)


def _adenosis(c: _Canvas):
    """Lobules of small, crowded, compressed acini with tiny lumens, in stroma."""
    c.stroma(0.30, fibre=0.5)
    lobules = c.noise(22) > 0.0
    _spindles(c, 60, avoid=lobules.astype(float))
    _glands(c, spacing=5.0, radius=2.3, lumen=0.22, elong=1.8, r_nuc=0.85, gland_mask=lobules)


def _fibroadenoma(c: _Canvas):
    """Loose stroma with sparse spindle cells and long slit-like ducts."""
    c.stroma(0.32, fibre=0.7)
    ducts = []
    for _ in range(c.rng.integers(1, 3) + 1):
        ducts.append(c.curve_through_canvas(c.rng.uniform(40, 80), turn=0.07))
    duct_band = Image.new("F", (c.w, c.h), 0.0)
    for pts, _ in ducts:
        c.line(duct_band, pts, 7.0, 1.0)
    _spindles(c, 30, r=0.8, elong=3.2, avoid=np.asarray(duct_band))
    for pts, ang in ducts:
        c.line(c.cyto, pts, 4.8, 0.2)
        c.line(c.space, pts, 0.9, 1.0)
        _epithelial_lining(c, pts, ang, (1.3, -1.3), 2.0, 0.9, 1.5, 0.85)
        _epithelial_lining(c, pts, ang, (2.7, -2.7), 3.2, 0.7, 2.5, 0.75)


def _phyllodes(c: _Canvas):
    """Hypercellular stroma of aligned spindle cells around a leaf-like cleft lined by epithelium."""
    c.stroma(0.34, fibre=0.4)
    flow = c.rng.uniform(0, math.pi) + 0.7 * c.noise(15)
    pts, ang = c.curve_through_canvas(c.rng.uniform(50, 90), turn=0.1)
    band = Image.new("F", (c.w, c.h), 0.0)
    c.line(band, pts, 7.5, 1.0)
    x, y = c.hex_points(3.1, jitter=0.35)
    keep = c.sample(np.asarray(band), x, y) < 0.5
    c.nuclei(x[keep], y[keep], 0.95, cv=0.14, elong=3.0, elong_cv=0.2, theta=c.sample(flow, x[keep], y[keep]),
             dark=0.9)
    c.line(c.cyto, pts, 5.0, 0.2)
    c.line(c.space, pts, 2.0, 1.0)
    _epithelial_lining(c, pts, ang, (1.9, -1.9), 2.0, 0.9, 1.5, 0.85)
    _epithelial_lining(c, pts, ang, (3.1, -3.1), 3.2, 0.7, 2.5, 0.75)


def _tubular_adenoma(c: _Canvas):
    """Uniform round tubules with open lumens, packed back to back."""
    c.stroma(0.24, fibre=0.3)
    _glands(c, spacing=9.0, radius=4.0, lumen=0.5, elong=1.1, r_nuc=0.95)


def _nests(c: _Canvas, cell, threshold, spacing, r, cv, elong, irregular, dark, cyto_e, holes, hole_r):
    """Solid nests of (atypical) epithelial cells in stroma, optionally with punched-out lumens."""
    nest = c.noise(cell) > threshold
    c.eosin = np.where(nest, 0.0, c.eosin)
    c.cyto = Image.fromarray((nest * cyto_e).astype(np.float32), "F")
    x, y = c.hex_points(spacing, jitter=0.3)
    keep = c.sample(nest, x, y)
    x, y = x[keep], y[keep]
    if holes:
        hx, hy = c.uniform_points(holes)
        inside = c.sample(nest, hx, hy)
        hx, hy = hx[inside], hy[inside]
        hr = hole_r * c.u * np.exp(c.rng.normal(0, 0.25, hx.size))
        c.ellipses(c.space, hx, hy, hr, hr, np.zeros(hx.size), 1.0)
        if hx.size:
            d = np.hypot(x[:, None] - hx[None], y[:, None] - hy[None]) - hr[None]
            keep = d.min(axis=1) > 0.6 * c.u
            x, y = x[keep], y[keep]
    c.nuclei(x, y, r, cv=cv, elong=elong, elong_cv=0.25, dark=dark, dark_cv=0.15, irregular=irregular)


def _ductal(c: _Canvas):
    """Irregular solid nests of large, pleomorphic, crowded nuclei, a few cribriform holes."""
    c.stroma(0.32, fibre=0.6)
    c.chromatin = 0.45
    _spindles(c, 90, r=0.8, elong=3.0)
    _nests(c, cell=10, threshold=-0.3, spacing=3.5, r=1.8, cv=0.28, elong=1.35, irregular=0.13, dark=1.1,
           cyto_e=0.16, holes=500, hole_r=1.6)


def _lobular(c: _Canvas):
    """Small, uniform, discohesive cells in single-file cords through dense stroma."""
    c.stroma(0.34, fibre=0.8)
    c.chromatin = 0.35
    base = c.rng.uniform(0, math.pi)
    n_cords = int(math.hypot(c.w, c.h) / (6.0 * c.u)) + 2
    normal = np.array([-math.sin(base), math.cos(base)])
    for i in range(n_cords):
        centre = np.array([c.w / 2, c.h / 2]) + normal * (i - n_cords / 2) * 6.0 * c.u
        pts, ang = c.curve(int(math.hypot(c.w, c.h) / c.u) + 10, turn=0.05, start=(0.0, 0.0),
                           angle=base + c.rng.normal(0, 0.15))
        pts = pts - pts[len(pts) // 2] + centre
        x, y, a = c.along(pts, ang, 2.5, 0.0)
        keep = c.rng.random(x.size) > 0.15
        c.nuclei(x[keep] + c.rng.normal(0, 0.3 * c.u, keep.sum()), y[keep] + c.rng.normal(0, 0.3 * c.u, keep.sum()),
                 1.05, cv=0.14, elong=1.2, dark=1.0, irregular=0.06, cyto=(1.5, 0.18))
    x, y = c.uniform_points(120)
    c.nuclei(x, y, 1.05, cv=0.14, elong=1.2, dark=1.0, irregular=0.06, cyto=(1.5, 0.18))


def _mucinous(c: _Canvas):
    """Pale bluish mucin lakes with small floating clusters of tumour cells."""
    c.stroma(0.30, fibre=0.6)
    c.chromatin = 0.4
    lake = c.noise(14) > -0.1
    wisps = 0.2 * (0.7 + 0.3 * c.noise(1.5)) * (1 + 0.3 * c.noise(6))
    c.eosin = np.where(lake, 0.04 + 0.02 * c.noise(3), c.eosin)
    c.haem = np.where(lake, np.clip(wisps, 0.02, None), c.haem)
    cx, cy = c.uniform_points(200)
    inside = c.sample(lake, cx, cy)
    for x0, y0 in zip(cx[inside].tolist(), cy[inside].tolist()):
        rad = c.rng.uniform(2.5, 5.0) * c.u
        n = max(int((rad / c.u) ** 2 / 3.0), 3)
        ang = c.rng.uniform(0, 2 * math.pi, n)
        dist = rad * np.sqrt(c.rng.random(n))
        c.nuclei(x0 + dist * np.cos(ang), y0 + dist * np.sin(ang), 1.45, cv=0.2, elong=1.25, dark=1.05,
                 irregular=0.1, cyto=(1.7, 0.24))


def _papillary(c: _Canvas, layers=(1.7, 2.9, 4.1), r=1.3, elong=2.0, cyto_e=0.2, spacing=2.1, fronds=(2, 4)):
    """Branching fibrovascular cores lined by stratified columnar nuclei, with empty space between."""
    c.stroma(0.38, fibre=0.5)
    c.chromatin = 0.4
    tissue = Image.new("F", (c.w, c.h), 0.0)
    trees = fronds
    fronds = []
    for _ in range(c.rng.integers(*trees)):
        pts, ang = c.curve_through_canvas(c.rng.uniform(50, 90), turn=0.09)
        fronds.append((pts, ang))
        for _ in range(c.rng.integers(1, 3)):
            i = c.rng.integers(len(pts) // 4, 3 * len(pts) // 4)
            side = c.rng.choice([-1.0, 1.0])
            fronds.append(c.curve(c.rng.uniform(15, 35), turn=0.09, start=tuple(pts[i]),
                                  angle=ang[i] + side * c.rng.uniform(0.5, 1.1)))
    for pts, _ in fronds:
        c.line(tissue, pts, 2 * (max(layers) + 1.3), 1.0)
    c.space = Image.fromarray((1.0 - np.asarray(tissue)).astype(np.float32), "F")
    for pts, _ in fronds:
        c.line(c.cyto, pts, 2 * (max(layers) + 1.3), cyto_e)
    for pts, _ in fronds:
        c.line(c.cyto, pts, 2.2, 0.0)  # the core shows the stroma beneath
    for pts, ang in fronds:
        x, y, a = c.along(pts, ang, 5.0, 0.0)
        c.nuclei(x, y, 0.75, elong=3.0, theta=a, dark=0.8)
        _epithelial_lining(c, pts, ang, [s * o for o in layers for s in (1, -1)], spacing, r, elong, 1.05,
                           cv=0.2, irregular=0.1)


def _tma_breast(c: _Canvas):
    """Infiltrating carcinoma: small nests and glands of medium pleomorphic nuclei in desmoplastic stroma."""
    c.stroma(0.33, fibre=0.7)
    c.chromatin = 0.4
    _spindles(c, 80)
    _nests(c, cell=5, threshold=0.3, spacing=3.0, r=1.4, cv=0.22, elong=1.3, irregular=0.1, dark=1.0,
           cyto_e=0.2, holes=60, hole_r=1.3)


def _tma_bladder(c: _Canvas):
    """Urothelial carcinoma: papillary fronds with thick, many-layered urothelium of pale cells."""
    _papillary(c, layers=(1.6, 3.2, 4.8, 6.4), r=1.15, elong=1.5, cyto_e=0.1, spacing=2.8, fronds=(3, 5))


def _tma_lung(c: _Canvas):
    """Lung: alveolar spaces separated by thin septa, rims lined by flat pneumocyte/tumour nuclei."""
    c.stroma(0.36, fibre=0.3)
    c.chromatin = 0.35
    x, y = c.hex_points(10.5, jitter=0.15)
    rx = 3.6 * c.u * np.exp(c.rng.normal(0, 0.15, x.size))
    ry = rx * np.exp(c.rng.normal(0, 0.2, x.size))
    theta = c.rng.uniform(0, math.pi, x.size)
    c.ellipses(c.space, x, y, rx, ry, theta, 1.0)
    for x0, y0, a, b, t in zip(x.tolist(), y.tolist(), rx.tolist(), ry.tolist(), theta.tolist()):
        n = max(int(math.pi * (a + b) / (4.0 * c.u)), 3)
        phi = np.linspace(0, 2 * math.pi, n, endpoint=False) + c.rng.uniform(0, 2 * math.pi)
        px, py = (a + 0.6 * c.u) * np.cos(phi), (b + 0.6 * c.u) * np.sin(phi)
        nx = x0 + px * math.cos(t) - py * math.sin(t)
        ny = y0 + px * math.sin(t) + py * math.cos(t)
        c.nuclei(nx, ny, 1.2, cv=0.2, elong=2.2, theta=np.arctan2(ny - y0, nx - x0) + math.pi / 2, dark=1.0,
                 irregular=0.08)
    _spindles(c, 40, r=1.0, elong=1.4, dark=0.9, avoid=c.space_array())


def _tma_lymphoma(c: _Canvas):
    """Lymphoma: a dense sheet of small, round, dark, uniform nuclei with scant cytoplasm."""
    c.stroma(0.22, fibre=0.2)
    c.chromatin = 0.25
    for _ in range(c.rng.integers(0, 3)):
        pts, _ = c.curve_through_canvas(c.rng.uniform(20, 40), turn=0.1)
        c.line(c.cyto, pts, 1.2, 0.35)  # a small vessel
    x, y = c.hex_points(2.7, jitter=0.3)
    c.nuclei(x, y, 0.95, cv=0.12, elong=1.1, dark=0.95, irregular=0.05)


def _tma_core(style):
    """A TMA image: the tissue of ``style`` on a round core whose edge often crosses the field.

    The glass around the core makes the amount of white vary within every class, so brightness
    alone does not tell the classes apart.
    """
    def draw(c: _Canvas):
        style(c)
        if c.rng.random() < 0.6:
            radius = c.rng.uniform(1.0, 2.5) * max(c.w, c.h)
            direction = c.rng.uniform(0, 2 * math.pi)
            # The edge passes between 10% and 50% of the way in from the field's border.
            reach = radius + c.rng.uniform(0.0, 0.4) * min(c.w, c.h) - 0.5 * min(c.w, c.h)
            cx = c.w / 2 + reach * math.cos(direction)
            cy = c.h / 2 + reach * math.sin(direction)
            outside = (np.hypot(c.xx - cx, c.yy - cy) > radius).astype(np.float32)
            c.space = Image.fromarray(np.maximum(np.asarray(c.space), outside), "F")
    return draw


STYLES = {
    "A": _adenosis, "F": _fibroadenoma, "PT": _phyllodes, "TA": _tubular_adenoma,
    "DC": _ductal, "LC": _lobular, "MC": _mucinous, "PC": _papillary,
    "breast": _tma_core(_tma_breast), "bladder": _tma_core(_tma_bladder), "lung": _tma_core(_tma_lung),
    "lymphoma": _tma_core(_tma_lymphoma),
}
