"""Classic full-reference similarity measures the learned search is compared against.

The paper this project follows reports SSIM (accuracy 64% at threshold 0.7) and FSIM (56% at
0.3) as baselines for "are these two photos similar?". Both are implemented here so the
comparison can be rerun on our own data:

* :func:`ssim`: Wang et al. 2004, through scikit-image, with the settings of the original
  paper (11x11 Gaussian window, sigma 1.5, population covariance).
* :func:`fsim` / :func:`fsimc`: Zhang, Zhang, Mou & Zhang, "FSIM: A Feature Similarity Index
  for Image Quality Assessment", IEEE TIP 20(8), 2011. A NumPy re-implementation of the
  authors' reference code: Kovesi's log-Gabor phase congruency (``phasecong2``: 4 scales,
  4 orientations, shortest wavelength 6, scale factor 2, sigmaOnf 0.55, k = 2 with the
  Rayleigh noise model), Scharr gradient magnitude, T1 = 0.85, T2 = 160, pooling weighted by
  max(PC1, PC2), and for FSIMc the YIQ chroma term (T3 = T4 = 200, lambda = 0.03).

Inputs are PIL images or arrays (HxW or HxWx3, values in 0..255). The two photos being
compared generally differ in size, so by default both are resized to ``size x size``; pass
``size=None`` to compare same-shaped images as they are, which also applies FSIM's own
downsampling (average filter then decimate by F = max(1, round(min(H, W) / 256))), as the
reference code does.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import scipy.fft
from PIL import Image
from scipy import ndimage
from skimage.metrics import structural_similarity

__all__ = ["fsim", "fsimc", "phase_congruency", "ssim"]

ImageLike = Image.Image | np.ndarray

# ITU-R BT.601 luma, the Y of YIQ (also what PIL's "L" conversion uses), and the I and Q rows
# exactly as in the FSIM reference code.
_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64
)

# phasecong2 parameters used by FSIM.
_SCALES = 4
_ORIENTS = 4
_MIN_WAVELENGTH = 6.0
_MULT = 2.0
_SIGMA_ON_F = 0.55
_D_THETA_ON_SIGMA = 1.2
_K = 2.0
_EPS = 1e-4  # Kovesi's guard in the mean phase vector.
_AN_EPS = 1e-6  # Keeps PC finite on perfectly flat images; negligible against 8-bit noise.

# FSIM constants (for pixel values in 0..255).
_T1, _T2, _T3, _T4, _LAMBDA = 0.85, 160.0, 200.0, 200.0, 0.03

_SCHARR_X = np.array([[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]]) / 16.0


def _as_float(image: ImageLike) -> np.ndarray:
    """Pixels as float64, HxW or HxWx3, without rescaling (inputs are 0..255)."""
    if isinstance(image, Image.Image):
        mode = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
        image = np.asarray(image.convert(mode))
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {array.shape}")
    return array


def _resize(channel: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bicubic resize of one float channel, clipped back to 0..255."""
    if channel.shape == (size, size):
        return channel
    resized = Image.fromarray(channel.astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BICUBIC
    )
    return np.clip(np.asarray(resized, dtype=np.float64), 0.0, 255.0)


def _yiq(image: ImageLike, size: int | None, chroma: bool = True) -> np.ndarray:
    """Y (and I, Q) planes (C, H, W); a gray input has I = Q = 0, so its chroma term is 1."""
    array = _as_float(image)
    if array.ndim == 2:
        planes = [array] + [np.zeros_like(array)] * (2 if chroma else 0)
    else:
        planes = [array @ weights for weights in _YIQ[: 3 if chroma else 1]]
    if size is not None:
        planes = [_resize(p, size) for p in planes]
    return np.stack(planes)


def _pair(
    a: ImageLike, b: ImageLike, size: int | None, chroma: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Both images as YIQ (or just Y) planes at one common shape."""
    if size is not None and size < 8:
        raise ValueError("size must be at least 8 pixels")
    ya, yb = _yiq(a, size, chroma), _yiq(b, size, chroma)
    if ya.shape != yb.shape:
        raise ValueError(f"shapes differ ({ya.shape[1:]} vs {yb.shape[1:]}); pass a size")
    return ya, yb


def ssim(a: ImageLike, b: ImageLike, size: int | None = 256) -> float:
    """Mean SSIM of the two luma images (Wang et al. 2004 settings, data range 255).

    Both images are resized to ``size x size`` first because the photos being compared
    usually differ in shape; ``size=None`` requires equal shapes and compares them as they are.
    """
    ya, yb = _pair(a, b, size)
    value = structural_similarity(
        ya[0],
        yb[0],
        data_range=255.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    return float(value)


def _grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised frequency coordinates (+/-0.5) with the zero frequency at [0, 0]."""

    def axis(n: int) -> np.ndarray:
        if n % 2:
            return np.arange(-(n - 1) / 2, (n - 1) / 2 + 1) / (n - 1)
        return np.arange(-n / 2, n / 2) / n

    x, y = np.meshgrid(axis(cols), axis(rows))
    return np.fft.ifftshift(x), np.fft.ifftshift(y)


@lru_cache(maxsize=8)
def _filter_bank(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-Gabor filters (O, S, H, W) in the frequency domain and each orientation's noise gain.

    The gain turns sqrt(mean squared smallest-scale response) into Kovesi's noise threshold
    T: it folds together the filter energy EM_n, the expected noise energy of the summed
    scales (sum_s f_s^2 + 2 sum_{i<j} f_i f_j = (sum_s f_s)^2 in the spatial domain), the
    Rayleigh mean + k sigma, and the empirical /1.7 for the PC_2 measure.
    """
    x, y = _grid(rows, cols)
    radius = np.sqrt(x**2 + y**2)
    theta = np.arctan2(-y, x)
    lowpass = 1.0 / (1.0 + (radius / 0.45) ** 30)  # Butterworth, cutoff 0.45, order 15
    radius[0, 0] = 1.0  # avoid log(0); the DC value is zeroed below

    wavelengths = _MIN_WAVELENGTH * _MULT ** np.arange(_SCALES)
    log_r = np.log(radius[None] * wavelengths[:, None, None])
    radial = np.exp(-(log_r**2) / (2 * math.log(_SIGMA_ON_F) ** 2)) * lowpass
    radial[:, 0, 0] = 0.0

    theta_sigma = math.pi / _ORIENTS / _D_THETA_ON_SIGMA
    angles = np.arange(_ORIENTS) * math.pi / _ORIENTS
    sin_t, cos_t = np.sin(theta), np.cos(theta)
    ds = sin_t[None] * np.cos(angles)[:, None, None] - cos_t[None] * np.sin(angles)[:, None, None]
    dc = cos_t[None] * np.cos(angles)[:, None, None] + sin_t[None] * np.sin(angles)[:, None, None]
    spread = np.exp(-(np.arctan2(ds, dc) ** 2) / (2 * theta_sigma**2))

    bank = spread[:, None] * radial[None]  # (O, S, H, W)
    em_n = np.sum(bank[:, 0] ** 2, axis=(-2, -1))
    spatial = np.real(np.fft.ifft2(bank.sum(axis=1))) * math.sqrt(rows * cols)
    noise_energy2_per_power = 2.0 * np.sum(spatial**2, axis=(-2, -1))
    rayleigh = math.sqrt(math.pi / 2) + _K * math.sqrt(2 - math.pi / 2)
    gain = np.sqrt(noise_energy2_per_power / em_n / 2 / math.log(2)) * rayleigh / 1.7
    bank = bank.astype(np.float32)
    bank.setflags(write=False)
    gain.setflags(write=False)
    return bank, gain


def _phase_congruency(images: np.ndarray) -> np.ndarray:
    """PC maps (N, H, W) of a stack of luma images, as phasecong2 in the FSIM code.

    Per image and orientation, with E + iO the filter responses at the four scales, their sum
    Z and the mean phase Z / (|Z| + eps):
    energy = sum_s (E.MeanE + O.MeanO - |E.MeanO - O.MeanE|)
           = (|Z|^2 - sum_s |O Re Z - E Im Z|) / (|Z| + eps),
    less Kovesi's noise threshold; PC = sum_o energy / sum_{o,s} |E + iO|. The responses are
    single precision (twice as fast; PC changes by < 1e-6), the sums double.
    """
    n, rows, cols = images.shape
    bank, gain = _filter_bank(rows, cols)
    result = np.empty(images.shape)
    for i in range(n):
        spectrum = scipy.fft.fft2(images[i]).astype(np.complex64)
        energy_all = np.zeros((rows, cols))
        amplitude_all = np.zeros((rows, cols))
        for o in range(_ORIENTS):
            eo = scipy.fft.ifft2(spectrum * bank[o], overwrite_x=True)  # (S, H, W)
            total = eo.sum(axis=0)
            magnitude = np.abs(total)
            spread = np.abs(eo.imag * total.real - eo.real * total.imag).sum(axis=0)
            energy = (magnitude * magnitude - spread) / (magnitude + _EPS)
            smallest = eo[0]
            median_e2 = np.median(smallest.real**2 + smallest.imag**2)
            energy_all += np.maximum(energy - gain[o] * math.sqrt(median_e2), 0.0)
            amplitude_all += np.abs(eo).sum(axis=0)
        result[i] = energy_all / (amplitude_all + _AN_EPS)
    return result


def phase_congruency(image: ImageLike) -> np.ndarray:
    """Phase congruency map (HxW, about 0..1) of an image's luma, FSIM's feature map."""
    return _phase_congruency(_yiq(image, None, chroma=False))[0]


def _downsample(planes: np.ndarray) -> np.ndarray:
    """The FSIM code's F x F average filter (MATLAB 'same', zero padded) then decimation by F."""
    _, rows, cols = planes.shape
    f = max(1, math.floor(min(rows, cols) / 256 + 0.5))  # MATLAB round: halves go up
    if f == 1:
        return planes
    before = (f + 1) // 2 - 1  # rows of the window above the output pixel, as conv2 'same'
    out_r, out_c = -(-rows // f), -(-cols // f)
    padded = np.pad(planes, ((0, 0), (before, f), (before, f)))
    blocks = padded[:, : out_r * f, : out_c * f].reshape(-1, out_r, f, out_c, f)
    return blocks.mean(axis=(2, 4))


def _gradient_magnitude(images: np.ndarray) -> np.ndarray:
    """Scharr gradient magnitude of each image, zero padded like conv2 'same'."""
    gx = ndimage.correlate(images, _SCHARR_X[None], mode="constant")
    gy = ndimage.correlate(images, _SCHARR_X.T[None], mode="constant")
    return np.hypot(gx, gy)


def _similarity(p: np.ndarray, q: np.ndarray, c: float) -> np.ndarray:
    return (2 * p * q + c) / (p**2 + q**2 + c)


def _fsim(a: ImageLike, b: ImageLike, size: int | None, chroma: bool) -> float:
    """FSIM, or FSIMc with ``chroma``: similarity maps pooled with weight max(PC1, PC2)."""
    ya, yb = _pair(a, b, size, chroma)
    ya, yb = _downsample(ya), _downsample(yb)
    luma = np.stack([ya[0], yb[0]])
    pc = _phase_congruency(luma)
    grad = _gradient_magnitude(luma)
    sim = _similarity(pc[0], pc[1], _T1) * _similarity(grad[0], grad[1], _T2)
    if chroma:
        s_iq = _similarity(ya[1], yb[1], _T3) * _similarity(ya[2], yb[2], _T4)
        # real(x .^ lambda) as the reference: opposite hues give x < 0, so |x|^l cos(l pi).
        sim *= np.abs(s_iq) ** _LAMBDA * np.where(s_iq < 0, math.cos(_LAMBDA * math.pi), 1.0)

    weight = np.maximum(pc[0], pc[1])
    total = weight.sum()
    if not total > 0:  # no structure in either image: fall back to a plain mean
        return float(sim.mean())
    return float((sim * weight).sum() / total)


def fsim(a: ImageLike, b: ImageLike, size: int | None = 256) -> float:
    """FSIM (luma only) of two images; 1 for identical images, lower as structure differs.

    Both images are resized to ``size x size`` first because the photos being compared
    usually differ in shape; ``size=None`` requires equal shapes and follows the reference
    code exactly, including its automatic downsampling of large images.
    """
    return _fsim(a, b, size, chroma=False)


def fsimc(a: ImageLike, b: ImageLike, size: int | None = 256) -> float:
    """FSIMc: FSIM times the YIQ chroma similarity (equals FSIM when both are gray)."""
    return _fsim(a, b, size, chroma=True)
