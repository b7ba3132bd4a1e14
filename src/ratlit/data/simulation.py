"""Physics of the embedded data sets: low-dose CT and low-count PET, simulated on the projections.

CT: an attenuation map (from HU) is projected (Beer-Lambert line integrals, scikit-image ``radon``),
photon counts are drawn from Poisson(I0 * exp(-p)) for each ray, the log-transformed projections are
reconstructed by filtered back-projection (``iradon``, ramp filter). Quarter dose is I0 / 4.

PET: an activity map is projected and attenuated (``exp(-radon(mu))``), prompts are Poisson counts at a
chosen total; the low-count data are the full-count data thinned by a dose-reduction factor (binomial
thinning = list-mode decimation). Both are reconstructed by OSEM with the same attenuation model and
rescaled to activity units.

The embedded CT set's procedural phantom patients (``phantom_patient``: one anatomy per patient, its slices
neighbours along the body) and its quarter/normal-dose scan pairs (``simulate_ct_doses``) are here too;
data/ct.py and data/pet.py compose and write the data sets.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import iradon, radon

from ratlit.utils.errors import InputError

MU_WATER_PER_MM = 0.0192  # linear attenuation of water at about 70 keV


def inscribed_circle(shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside the circle scikit-image's ``radon(circle=True)`` reconstructs."""
    h, w = shape
    rows, cols = np.ogrid[:h, :w]
    radius = min(h, w) // 2
    return (rows - h // 2) ** 2 + (cols - w // 2) ** 2 <= radius**2  # scikit-image's own definition


def ct_line_integrals(hu: np.ndarray, pixel_mm: float, n_views: int = 720) -> tuple[np.ndarray, np.ndarray]:
    """The noise-free Beer-Lambert line integrals of a HU image (``radon`` of its attenuation, in mm units) and the
    view angles: what every simulated exposure of the image shares."""
    if hu.ndim != 2 or hu.shape[0] != hu.shape[1]:
        raise InputError(f"CT simulation needs a square 2D image, got {hu.shape}")
    inside = inscribed_circle(hu.shape)
    mu = np.where(inside, MU_WATER_PER_MM * (1.0 + np.clip(hu, -1000.0, None) / 1000.0), 0.0)
    theta = np.linspace(0.0, 180.0, n_views, endpoint=False)
    return radon(mu, theta, circle=True) * pixel_mm, theta


def simulate_ct_scan(
    hu: np.ndarray, pixel_mm: float, photons: float, rng: np.random.Generator, n_views: int = 720,
    geometry: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """One simulated scan of a HU image with ``photons`` incident photons per ray; returns the FBP image in HU.
    ``geometry``: the image's :func:`ct_line_integrals`, when several exposures of it are simulated."""
    line_integrals, theta = geometry if geometry is not None else ct_line_integrals(hu, pixel_mm, n_views)
    inside = inscribed_circle(hu.shape)
    counts = rng.poisson(photons * np.exp(-line_integrals))
    measured = -np.log(np.maximum(counts, 1) / photons)  # a ray with no photon counts as one (log of 0)
    mu_rec = iradon(measured / pixel_mm, theta, circle=True, filter_name="ramp", output_size=hu.shape[0])
    return np.where(inside, (mu_rec / MU_WATER_PER_MM - 1.0) * 1000.0, -1000.0).astype(np.float32)


def _backproject(sinogram: np.ndarray, theta: np.ndarray, size: int) -> np.ndarray:
    return iradon(sinogram, theta, circle=True, filter_name=None, output_size=size)


def osem(
    counts: np.ndarray, attenuation: np.ndarray, theta: np.ndarray, size: int, iterations: int = 4, subsets: int = 8
) -> np.ndarray:
    """Ordered-subsets EM for ``counts ~ Poisson(attenuation * radon(x))``; returns x ``[size, size]``."""
    inside = inscribed_circle((size, size))
    x = inside.astype(np.float64)
    groups = [np.arange(s, len(theta), subsets) for s in range(subsets)]
    sensitivity = [np.maximum(_backproject(attenuation[:, g], theta[g], size), 1e-12) for g in groups]
    for _ in range(iterations):
        for g, sens in zip(groups, sensitivity, strict=True):
            expected = attenuation[:, g] * radon(x, theta[g], circle=True)
            ratio = np.where(expected > 1e-12, counts[:, g] / np.maximum(expected, 1e-12), 0.0)
            x = np.where(inside, x * np.maximum(_backproject(attenuation[:, g] * ratio, theta[g], size), 0) / sens, 0.0)
    return x


def simulate_pet_pair(
    activity: np.ndarray,
    mu_per_mm: np.ndarray,
    pixel_mm: float,
    total_counts: float,
    dose_reduction: float,
    rng: np.random.Generator,
    n_views: int = 96,
    iterations: int = 4,
    subsets: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Full-count and thinned (1 / dose_reduction) acquisitions of one slice, both OSEM-reconstructed.

    Returns ``(low_count, full_count)`` images in the units of ``activity``.
    """
    size = activity.shape[0]
    if activity.shape != (size, size) or mu_per_mm.shape != activity.shape:
        raise InputError(f"PET simulation needs square, matching activity and mu maps, "
                         f"got {activity.shape}, {mu_per_mm.shape}")
    inside = inscribed_circle(activity.shape)
    theta = np.linspace(0.0, 180.0, n_views, endpoint=False)
    attenuation = np.exp(-radon(np.where(inside, mu_per_mm, 0.0), theta, circle=True) * pixel_mm)
    expected = attenuation * radon(np.where(inside, activity, 0.0), theta, circle=True)
    if expected.sum() <= 0:
        return np.zeros_like(activity, dtype=np.float32), np.zeros_like(activity, dtype=np.float32)
    scale = total_counts / expected.sum()  # counts per unit of projected activity
    full = rng.poisson(expected * scale)
    low = rng.binomial(full, 1.0 / dose_reduction)
    full_img = osem(full, attenuation, theta, size, iterations, subsets) / scale
    low_img = osem(low, attenuation, theta, size, iterations, subsets) * dose_reduction / scale
    return low_img.astype(np.float32), full_img.astype(np.float32)


# --- CT phantoms and dose pairs for the embedded CT set -----------------------------------------------


def phantom_anatomy(rng: np.random.Generator) -> dict:
    """One phantom patient's anatomy: body and organ sizes, liver lesions and bowel gas, each lesion and gas pocket
    with the span of slice positions ``z`` (0..1) it is seen in. Slices of one patient share it."""
    def spans(count: int, low: float, high: float) -> list[tuple[float, ...]]:
        return [(*rng.uniform(low, high, 2), *rng.uniform(0.008, 0.025 if low < 0 else 0.03, 2),
                 rng.uniform(0.25, 0.75), rng.uniform(0.06, 0.2)) for _ in range(count)]

    lesions = [(60.0 + rng.choice([-1, 1]) * rng.uniform(15, 50), *spot) for spot in spans(rng.integers(2, 6),
                                                                                           -0.07, 0.07)]
    return {"ry": rng.uniform(0.22, 0.27), "rx": rng.uniform(0.3, 0.36), "fat": rng.uniform(0.015, 0.03),
            "liver_hu": 60.0 + rng.normal(0, 5), "liver_angle": rng.uniform(-0.3, 0.3),
            "phase": rng.uniform(0, 2 * np.pi, 4), "lesions": lesions, "gas": spans(rng.integers(1, 4), 0.0, 0.12)}


def render_phantom(anatomy: dict, z: float, rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """The slice at position ``z`` (0..1, head to feet) of a phantom patient, in HU: fat, muscle, liver with
    lesions, spleen, kidneys, aorta, spine, gas. Organs grow and shrink smoothly along ``z``; a lesion or gas
    pocket shows within its span; the soft-tissue texture is the slice's own (``rng``)."""
    from scipy.ndimage import gaussian_filter

    rows, cols = np.mgrid[:size, :size].astype(np.float64) / size - 0.5

    def ellipse(cy, cx, ry, rx, angle=0.0):
        c, s = np.cos(angle), np.sin(angle)
        y, x = rows - cy, cols - cx
        return ((c * x + s * y) / rx) ** 2 + ((-s * x + c * y) / ry) ** 2 <= 1.0

    def wave(k: int, depth: float) -> float:  # a smooth change along the patient, its phase the patient's
        return 1.0 + depth * np.sin(2 * np.pi * z + anatomy["phase"][k])

    def seen(z0: float, half: float) -> float:  # a round object's radius factor at this slice (0: not in it)
        return float(np.sqrt(max(0.0, 1 - ((z - z0) / half) ** 2)))

    hu = np.full((size, size), -1000.0)
    ry, rx, fat = anatomy["ry"] * wave(0, 0.04), anatomy["rx"] * wave(0, 0.04), anatomy["fat"]
    hu[ellipse(0, 0, ry, rx)] = -100.0
    hu[ellipse(0, 0, ry - fat, rx - fat)] = 45.0
    liver = 1.35 - 0.7 * z  # larger towards the head
    hu[ellipse(-0.02, -0.12, 0.13 * liver, 0.14 * liver, anatomy["liver_angle"])] = anatomy["liver_hu"]
    for value, cy, cx, ly, lx, z0, half in anatomy["lesions"]:
        if (f := seen(z0, half)) > 0.2:
            hu[ellipse(-0.02 + cy * liver, -0.12 + cx * liver, ly * f, lx * f)] = value
    hu[ellipse(-0.02, 0.17, 0.07 * wave(1, 0.2), 0.05 * wave(1, 0.2), 0.4)] = 48.0  # spleen
    kidney = wave(2, 0.25)
    for side in (-1, 1):  # kidneys: contrast-enhanced cortex around the medulla
        hu[ellipse(0.08, side * 0.1, 0.05 * kidney, 0.035 * kidney)] = 160.0
        hu[ellipse(0.08, side * 0.1, 0.03 * kidney, 0.018 * kidney)] = 35.0
    hu[ellipse(0.06, 0.02, 0.018, 0.018)] = 200.0  # aorta
    spine = wave(3, 0.08)
    hu[ellipse(0.15, 0.0, 0.045 * spine, 0.045 * spine)] = 750.0  # vertebral body: cortical shell
    hu[ellipse(0.15, 0.0, 0.035 * spine, 0.035 * spine)] = 250.0
    for cy, cx, gy, gx, z0, half in anatomy["gas"]:  # bowel gas
        if (f := seen(z0, half)) > 0.2:
            hu[ellipse(-0.1 + cy, cx, gy * f, gx * f)] = -900.0
    body = hu > -500
    texture = gaussian_filter(rng.normal(0, 1, (size, size)), 3) * 25.0
    return np.where(body, hu + texture, hu).astype(np.float32)


def phantom_patient(rng: np.random.Generator, slices: int, size: int = 512, spacing: float = 0.06
                    ) -> list[np.ndarray]:
    """``slices`` neighbouring slices (``spacing`` apart in ``z``) of one phantom patient: one anatomy, each
    slice its own position and texture. Patients are independent; a patient's slices are not."""
    anatomy = phantom_anatomy(rng)
    return [render_phantom(anatomy, 0.5 + spacing * (k - (slices - 1) / 2), rng, size) for k in range(slices)]


def body_phantom(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """One slice of a new phantom patient (:func:`phantom_patient`)."""
    return phantom_patient(rng, 1, size)[0]


def _simulate_ct_job(job: tuple[np.ndarray, float, float, np.random.SeedSequence]) -> tuple[np.ndarray, np.ndarray]:
    hu, pixel_mm, photons, seed = job
    full_rng, quarter_rng = (np.random.default_rng(s) for s in seed.spawn(2))
    # One object, two exposures: the noise-free line integrals are computed once (the projection is most of the
    # cost), each dose draws its own counts.
    geometry = ct_line_integrals(hu, pixel_mm)
    return simulate_ct_scan(hu, pixel_mm, photons / 4, quarter_rng, geometry=geometry), simulate_ct_scan(
        hu, pixel_mm, photons, full_rng, geometry=geometry)


def simulate_ct_doses(
    cases: list[tuple[np.ndarray, float]], photons: float, seed: int, workers: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(quarter dose, normal dose)`` scans of each ``(HU image, pixel mm)`` case, in parallel processes;
    each case draws from its own child of ``SeedSequence(seed)``, so the result does not depend on ``workers``."""
    import os

    from tqdm.auto import tqdm

    from ratlit.utils.stopping import worker_pool

    seeds = np.random.SeedSequence(seed).spawn(len(cases))
    jobs = [(hu, mm, photons, s) for (hu, mm), s in zip(cases, seeds, strict=True)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    with worker_pool(workers) as pool:  # its workers end with the block, also on an error or a stop
        return list(tqdm(pool.imap(_simulate_ct_job, jobs), total=len(jobs), desc="simulating CT scans", unit="slice"))
