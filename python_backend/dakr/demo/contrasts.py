"""Demo sites: MR contrasts from tissue fractions by signal equations, plus scanner effects.

Each site is a :class:`SiteProtocol`: a sequence (spin echo, spoiled gradient echo or inversion
recovery) with its timing, a field strength that selects the relaxation times, and scanner
effects (thick slices, multiplicative bias field, Rician noise, intensity gamma, output gain).

Relaxation times are approximate literature values: GM/WM T1 and T2 at 1.5 T and 3 T from
Stanisz et al., Magn Reson Med 54:507-512, 2005; CSF T1 ~4.3 s, nearly field independent
(Rooney et al., Magn Reson Med 57:308-318, 2007); CSF T2 ~2 s; proton densities as relative
water content (CSF 1, GM ~0.82, WM ~0.70). Gradient-echo T2* is approximated by T2.

Within-tissue texture of the real template (e.g. deep grey nuclei brighter than cortex in T1w)
is carried by shortening T1 and T2 where the template is brighter than its tissue mixture
predicts, so each contrast shows the texture with its own sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from scipy import ndimage

from dakr.data.names import validate_name
from dakr.demo.anatomy import TISSUES, TissueVolume, smooth_random_field

SequenceKind = Literal["spin_echo", "spoiled_gre", "inversion_recovery"]
Axis = Literal["x", "y", "z"]

#: Relative change of ln(T1), ln(T2) per unit of template texture (brighter -> shorter).
TEXTURE_RELAXATION_GAIN = 1.5
_BIAS_NODES = 4
_REFERENCE_PERCENTILE = 99.0
_INT16_MAX = 32767
_AXES: dict[str, int] = {"x": 0, "y": 1, "z": 2}


@dataclass(frozen=True)
class Relaxation:
    """Proton density (relative) and relaxation times (ms) of one tissue."""

    pd: float
    t1_ms: float
    t2_ms: float


RELAXATION: dict[str, dict[str, Relaxation]] = {
    "1.5T": {
        "CSF": Relaxation(1.00, 4300.0, 2000.0),
        "GM": Relaxation(0.82, 1124.0, 95.0),
        "WM": Relaxation(0.70, 884.0, 72.0),
    },
    "3T": {
        "CSF": Relaxation(1.00, 4300.0, 2000.0),
        "GM": Relaxation(0.82, 1820.0, 99.0),
        "WM": Relaxation(0.70, 1084.0, 69.0),
    },
}


@dataclass(frozen=True)
class SiteProtocol:
    """One demo site: acquisition protocol and scanner effects.

    slice_thickness_mm: 0 for a 3D isotropic acquisition, otherwise the slice profile FWHM along
    ``slice_axis`` (only has an effect when thicker than the output resolution).
    bias_strength: standard deviation of the log bias field. noise_fraction: Rician sigma relative
    to the 99th percentile of the brain signal. gamma: exponent applied to the normalised
    magnitude. gain: scanner units of that percentile in the written int16 image.
    """

    name: str
    contrast: str
    field: str
    sequence: SequenceKind
    tr_ms: float
    te_ms: float
    ti_ms: float = 0.0
    flip_deg: float = 90.0
    slice_thickness_mm: float = 0.0
    slice_axis: Axis = "z"
    bias_strength: float = 0.1
    noise_fraction: float = 0.03
    gamma: float = 1.0
    gain: float = 1000.0

    def __post_init__(self) -> None:
        validate_name(self.name, "site")
        if self.field not in RELAXATION:
            raise ValueError(f"site {self.name}: unknown field {self.field!r}, use one of {list(RELAXATION)}")
        if self.sequence not in get_args(SequenceKind):
            kinds = ", ".join(get_args(SequenceKind))
            raise ValueError(f"site {self.name}: unknown sequence {self.sequence!r}, use one of {kinds}")
        if self.slice_axis not in _AXES:
            raise ValueError(f"site {self.name}: slice_axis must be 'x', 'y' or 'z'")
        if min(self.tr_ms, self.te_ms, self.gamma, self.gain) <= 0:
            raise ValueError(f"site {self.name}: tr_ms, te_ms, gamma and gain must be positive")


DEMO_SITES: tuple[SiteProtocol, ...] = (
    SiteProtocol(
        "site1_t1w_3T", "T1w", "3T", "spoiled_gre", tr_ms=20.0, te_ms=4.0, flip_deg=25.0,
        bias_strength=0.1, noise_fraction=0.02, gamma=1.0, gain=1000.0,
    ),
    SiteProtocol(
        "site2_t2w_3T", "T2w", "3T", "spin_echo", tr_ms=4000.0, te_ms=100.0,
        slice_thickness_mm=6.0, slice_axis="z", bias_strength=0.06, noise_fraction=0.03,
        gamma=0.9, gain=600.0,
    ),
    SiteProtocol(
        "site3_flair_1p5T", "FLAIR", "1.5T", "inversion_recovery", tr_ms=9000.0, te_ms=120.0,
        ti_ms=2500.0, slice_thickness_mm=5.0, slice_axis="y", bias_strength=0.1,
        noise_fraction=0.03, gamma=1.1, gain=1500.0,
    ),
    SiteProtocol(
        "site4_pdw_1p5T", "PDw", "1.5T", "spin_echo", tr_ms=3000.0, te_ms=30.0,
        slice_thickness_mm=4.0, slice_axis="x", bias_strength=0.05, noise_fraction=0.015,
        gamma=1.2, gain=2000.0,
    ),
)


def signal_equation(
    protocol: SiteProtocol, pd: np.ndarray, t1: np.ndarray, t2: np.ndarray
) -> np.ndarray:
    """Magnitude signal of the protocol's sequence for given PD, T1 (ms) and T2 (ms)."""
    e1 = np.exp(-protocol.tr_ms / t1)
    transverse = pd * np.exp(-protocol.te_ms / t2)
    if protocol.sequence == "spin_echo":
        return transverse * (1.0 - e1)
    if protocol.sequence == "spoiled_gre":
        alpha = np.deg2rad(protocol.flip_deg)
        return transverse * np.sin(alpha) * (1.0 - e1) / (1.0 - np.cos(alpha) * e1)
    return transverse * np.abs(1.0 - 2.0 * np.exp(-protocol.ti_ms / t1) + e1)


def tissue_signals(protocol: SiteProtocol) -> dict[str, float]:
    """Signal of each pure tissue (no texture) under the protocol."""
    table = RELAXATION[protocol.field]
    return {name: float(signal_equation(protocol, *np.array([r.pd, r.t1_ms, r.t2_ms]))) for name, r in table.items()}


def clean_signal(protocol: SiteProtocol, volume: TissueVolume) -> np.ndarray:
    """Noise-free partial-volume signal: sum over tissues of fraction x textured tissue signal."""
    table = [RELAXATION[protocol.field][name] for name in TISSUES]
    shrink = np.exp(-TEXTURE_RELAXATION_GAIN * volume.texture)[None]
    pd = np.array([r.pd for r in table], dtype=np.float32)[:, None, None, None]
    t1 = np.array([r.t1_ms for r in table], dtype=np.float32)[:, None, None, None] * shrink
    t2 = np.array([r.t2_ms for r in table], dtype=np.float32)[:, None, None, None] * shrink
    return np.sum(volume.fractions * signal_equation(protocol, pd, t1, t2), axis=0, dtype=np.float32)


def _linear_resample_axis(volume: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``volume`` along ``axis`` at fractional index ``positions``."""
    lower = np.clip(np.floor(positions).astype(int), 0, volume.shape[axis] - 2)
    weight = (positions - lower).reshape([-1 if a == axis else 1 for a in range(volume.ndim)])
    return np.take(volume, lower, axis) * (1.0 - weight) + np.take(volume, lower + 1, axis) * weight


def thick_slices(volume: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Simulate slices ``factor`` voxels thick: Gaussian slice profile, subsample, interpolate back."""
    n = volume.shape[axis]
    if factor <= 1.0 or n < 2:
        return volume
    sigma = np.sqrt(factor**2 - 1.0) / np.sqrt(8.0 * np.log(2.0))
    blurred = ndimage.gaussian_filter1d(volume, sigma, axis=axis, mode="nearest")
    n_thick = max(2, int(round((n - 1) / factor)) + 1)
    thick = _linear_resample_axis(blurred, axis, np.linspace(0.0, n - 1.0, n_thick))
    return _linear_resample_axis(thick, axis, np.linspace(0.0, n_thick - 1.0, n)).astype(np.float32)


def rician(magnitude: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma``."""
    real = magnitude + sigma * rng.standard_normal(magnitude.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(magnitude.shape, dtype=np.float32)
    return np.hypot(real, imaginary)


def synthesize_image(
    protocol: SiteProtocol, volume: TissueVolume, rng: np.random.Generator
) -> np.ndarray:
    """int16 image (X, Y, Z) of a subject acquired with the site's protocol and scanner."""
    signal = clean_signal(protocol, volume)
    axis = _AXES[protocol.slice_axis]
    voxel_mm = float(np.linalg.norm(volume.affine[:3, axis]))
    signal = thick_slices(signal, axis, protocol.slice_thickness_mm / voxel_mm)
    signal *= np.exp(protocol.bias_strength * smooth_random_field(rng, signal.shape, _BIAS_NODES))
    brain = volume.fractions.sum(axis=0) > 0.5
    signal /= np.percentile(signal[brain], _REFERENCE_PERCENTILE)
    magnitude = rician(signal, protocol.noise_fraction, rng) ** protocol.gamma
    return np.clip(np.rint(magnitude * protocol.gain), 0, _INT16_MAX).astype(np.int16)
