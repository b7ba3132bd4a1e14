"""Physics of the embedded data sets: low-dose CT and low-count PET, simulated on the projections.

CT: an attenuation map (from HU) is projected (Beer-Lambert line integrals, scikit-image ``radon``),
photon counts are drawn from Poisson(I0 * exp(-p)) for each ray, the log-transformed projections are
reconstructed by filtered back-projection (``iradon``, ramp filter). Quarter dose is I0 / 4.

PET: an activity map is projected and attenuated (``exp(-radon(mu))``), prompts are Poisson counts at a
chosen total; the low-count data are the full-count data thinned by a dose-reduction factor (binomial
thinning = list-mode decimation). Both are reconstructed by OSEM with the same attenuation model and
rescaled to activity units.

The embedded CT set's procedural body phantoms (``body_phantom``) and its quarter/normal-dose scan pairs
(``simulate_ct_doses``) are here too; data/ct.py and data/pet.py compose and write the data sets.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import iradon, radon

MU_WATER_PER_MM = 0.0192  # linear attenuation of water at about 70 keV


def inscribed_circle(shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside the circle scikit-image's ``radon(circle=True)`` reconstructs."""
    h, w = shape
    rows, cols = np.ogrid[:h, :w]
    radius = min(h, w) // 2
    return (rows - h // 2) ** 2 + (cols - w // 2) ** 2 <= radius**2  # scikit-image's own definition


def simulate_ct_scan(
    hu: np.ndarray, pixel_mm: float, photons: float, rng: np.random.Generator, n_views: int = 720
) -> np.ndarray:
    """One simulated scan of a HU image with ``photons`` incident photons per ray; returns the FBP image in HU."""
    if hu.ndim != 2 or hu.shape[0] != hu.shape[1]:
        raise ValueError(f"CT simulation needs a square 2D image, got {hu.shape}")
    inside = inscribed_circle(hu.shape)
    mu = np.where(inside, MU_WATER_PER_MM * (1.0 + np.clip(hu, -1000.0, None) / 1000.0), 0.0)
    theta = np.linspace(0.0, 180.0, n_views, endpoint=False)
    line_integrals = radon(mu, theta, circle=True) * pixel_mm
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
        for g, sens in zip(groups, sensitivity):
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
        raise ValueError(f"PET simulation needs square, matching activity and mu maps, "
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


def body_phantom(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """A procedural abdominal slice in HU: fat, muscle, liver with lesions, spleen, kidneys, aorta, spine, gas."""
    from scipy.ndimage import gaussian_filter

    rows, cols = np.mgrid[:size, :size].astype(np.float64) / size - 0.5

    def ellipse(cy, cx, ry, rx, angle=0.0):
        c, s = np.cos(angle), np.sin(angle)
        y, x = rows - cy, cols - cx
        return ((c * x + s * y) / rx) ** 2 + ((-s * x + c * y) / ry) ** 2 <= 1.0

    hu = np.full((size, size), -1000.0)
    ry, rx = rng.uniform(0.22, 0.27), rng.uniform(0.3, 0.36)
    fat = rng.uniform(0.015, 0.03)
    hu[ellipse(0, 0, ry, rx)] = -100.0
    hu[ellipse(0, 0, ry - fat, rx - fat)] = 45.0
    hu[ellipse(-0.02, -0.12, 0.13, 0.14, rng.uniform(-0.3, 0.3))] = 60.0 + rng.normal(0, 5)  # liver
    for _ in range(rng.integers(2, 5)):  # low- and high-contrast liver lesions
        # The value is drawn before the ellipse (Python evaluates an assignment's right side first): the draws'
        # order, and so the embedded data set, stays as it was.
        value = 60.0 + rng.choice([-1, 1]) * rng.uniform(15, 50)
        hu[ellipse(-0.02 + rng.uniform(-0.07, 0.07), -0.12 + rng.uniform(-0.07, 0.07),
                   *rng.uniform(0.008, 0.025, 2))] = value
    hu[ellipse(-0.02, 0.17, 0.07, 0.05, 0.4)] = 48.0  # spleen
    for side in (-1, 1):  # kidneys: contrast-enhanced cortex around the medulla
        hu[ellipse(0.08, side * 0.1, 0.05, 0.035)] = 160.0
        hu[ellipse(0.08, side * 0.1, 0.03, 0.018)] = 35.0
    hu[ellipse(0.06, 0.02, 0.018, 0.018)] = 200.0  # aorta
    hu[ellipse(0.15, 0.0, 0.045, 0.045)] = 750.0  # vertebral body: cortical shell
    hu[ellipse(0.15, 0.0, 0.035, 0.035)] = 250.0
    for _ in range(rng.integers(1, 4)):  # bowel gas
        hu[ellipse(rng.uniform(-0.15, -0.05), rng.uniform(0.0, 0.12), *rng.uniform(0.01, 0.03, 2))] = -900.0
    body = hu > -500
    texture = gaussian_filter(rng.normal(0, 1, (size, size)), 3) * 25.0
    return np.where(body, hu + texture, hu).astype(np.float32)


def _simulate_ct_job(job: tuple[np.ndarray, float, float, np.random.SeedSequence]) -> tuple[np.ndarray, np.ndarray]:
    hu, pixel_mm, photons, seed = job
    full_rng, quarter_rng = (np.random.default_rng(s) for s in seed.spawn(2))
    return simulate_ct_scan(hu, pixel_mm, photons / 4, quarter_rng), simulate_ct_scan(hu, pixel_mm, photons, full_rng)


def simulate_ct_doses(
    cases: list[tuple[np.ndarray, float]], photons: float, seed: int, workers: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(quarter dose, normal dose)`` scans of each ``(HU image, pixel mm)`` case, in parallel processes;
    each case draws from its own child of ``SeedSequence(seed)``, so the result does not depend on ``workers``."""
    import os

    from tqdm.auto import tqdm

    from ratlit.utils.stopping import worker_pool

    seeds = np.random.SeedSequence(seed).spawn(len(cases))
    jobs = [(hu, mm, photons, s) for (hu, mm), s in zip(cases, seeds)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    with worker_pool(workers) as pool:  # its workers end with the block, also on an error or a stop
        return list(tqdm(pool.imap(_simulate_ct_job, jobs), total=len(jobs), desc="simulating CT scans", unit="slice"))
