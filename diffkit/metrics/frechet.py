"""Fréchet distance and KID between feature sets, and pytorch-fid's .npz statistics files."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.linalg
from torch import Tensor

from diffkit.atomic import atomic_write
from diffkit.errors import DiffkitError

Array = npt.NDArray[np.float64]

MIN_SAMPLES = 2  # a covariance (and the unbiased MMD) needs two samples
# ------------------------------------------------------------------------------ Fréchet distance


def feature_statistics(features: npt.ArrayLike | Tensor) -> tuple[Array, Array]:
    """Mean (D,) and covariance (D, D) of (N, D) features, in float64 (sample covariance, as pytorch-fid)."""
    feats = _as_features(features)
    if feats.shape[0] < MIN_SAMPLES:
        raise DiffkitError(
            f"need at least {MIN_SAMPLES} images to estimate feature statistics, got {feats.shape[0]}: use more images"
        )
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def _as_features(features: npt.ArrayLike | Tensor) -> Array:
    if isinstance(features, Tensor):
        features = features.detach().cpu().double().numpy()
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2:
        raise DiffkitError(f"features must be a 2-D (N, D) array, got shape {feats.shape}: flatten them first")
    return feats


def frechet_distance(
    mu1: npt.ArrayLike, sigma1: npt.ArrayLike, mu2: npt.ArrayLike, sigma2: npt.ArrayLike, eps: float = 1e-6
) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017).

    d² = |mu1 - mu2|² + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^½)
    """
    m1, m2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = m1.shape[0]
    if m1.shape != m2.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise DiffkitError(
            f"statistics do not match: means {m1.shape} and {m2.shape}, covariances {s1.shape} and "
            f"{s2.shape}; compute both with the same feature net"
        )
    root = _checked_sqrtm(s1 @ s2)
    if root is None:
        # As pytorch-fid: a singular product (e.g. fewer images than feature dimensions) has no stable
        # root, so add eps·I to both covariances. Unlike pytorch-fid the traces use the offset
        # covariances too: the result is then the exact distance between the two regularised Gaussians
        # (never below zero) rather than a mix that comes out slightly negative for equal statistics.
        offset = eps * np.eye(d)
        s1, s2 = s1 + offset, s2 + offset
        root = _checked_sqrtm(s1 @ s2)
    diff = m1 - m2
    distance = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(_real_part(root)))
    return max(distance, 0.0)  # the true value is >= 0; rounding can leave -1e-12


def _real_part(root: npt.NDArray[Any] | None) -> Array:
    """The root without the negligible imaginary part rounding leaves; an error when it is not negligible."""
    if root is None:
        raise DiffkitError(
            "the Fréchet distance is numerically unstable (no square root of the covariance "
            "product): use more images than feature dimensions"
        )
    if np.iscomplexobj(root):
        imaginary = float(np.max(np.abs(np.diagonal(root).imag)))
        if imaginary > 1e-3:
            raise DiffkitError(
                f"the Fréchet distance is numerically unstable (imaginary part {imaginary:.3g}): "
                "use more images than feature dimensions"
            )
        root = root.real
    return np.asarray(root, dtype=np.float64)


def _checked_sqrtm(a: Array) -> npt.NDArray[Any] | None:
    """scipy's matrix square root, or None when scipy finds `a` singular or the root is not accurate."""
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        root = scipy.linalg.sqrtm(a)
    if any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught):
        return None
    if not np.all(np.isfinite(root)):
        return None
    scale = max(float(np.linalg.norm(a)), np.finfo(np.float64).tiny)
    if float(np.linalg.norm(root @ root - a)) / scale > 1e-6:
        return None
    return np.asarray(root)


# ----------------------------------------------------------------------------- kernel distance


def kernel_inception_distance(
    features1: npt.ArrayLike | Tensor,
    features2: npt.ArrayLike | Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean and std over random subsets of the unbiased MMD² estimate.

    Kernel k(x, y) = (x·y / d + 1)³. Subsets are drawn without replacement by a generator seeded with
    `seed`, so the result is deterministic; `subset_size` is clipped to the smaller set.
    """
    f1, f2 = _as_features(features1), _as_features(features2)
    if f1.shape[1] != f2.shape[1]:
        raise DiffkitError(
            f"features have different dimensions ({f1.shape[1]} and {f2.shape[1]}): compute both "
            "with the same feature net"
        )
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < MIN_SAMPLES:
        raise DiffkitError(
            f"KID needs at least {MIN_SAMPLES} images per set, got {f1.shape[0]} and {f2.shape[0]}: use more images"
        )
    rng = np.random.default_rng(seed)
    mmds = np.array(
        [
            _mmd2_unbiased(f1[rng.choice(f1.shape[0], m, replace=False)], f2[rng.choice(f2.shape[0], m, replace=False)])
            for _ in range(max(1, num_subsets))
        ]
    )
    return float(mmds.mean()), float(mmds.std())


def _mmd2_unbiased(x: Array, y: Array) -> float:
    """Unbiased MMD²: within-set kernel means leave out the diagonal (k(x_i, x_i) is not a cross-pair)."""
    m, d = x.shape

    def kernel(a: Array, b: Array) -> Array:
        return (a @ b.T / d + 1.0) ** 3

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


# ------------------------------------------------------------------------------ statistics files


def save_statistics(
    path: str | Path, mu: npt.ArrayLike, sigma: npt.ArrayLike, meta: dict[str, str] | None = None
) -> None:
    """Write `mu` and `sigma` as an .npz that pytorch-fid reads (`python -m pytorch_fid stats.npz ...`).

    `meta` (e.g. {"feature_net": name}) is stored as extra string arrays, which pytorch-fid ignores.
    """
    path = Path(path)
    arrays: dict[str, Any] = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    arrays |= {f"meta_{key}": np.asarray(str(value)) for key, value in (meta or {}).items()}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as out:  # a file object, so numpy does not append a second ".npz"
            np.savez(out, **arrays)

    atomic_write(path, write)


def statistics_metadata(path: str | Path) -> dict[str, str]:
    """The `meta` strings save_statistics stored in an .npz ({} for files from pytorch-fid or unreadable ones)."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            return {
                key.removeprefix("meta_"): str(data[key])
                for key in data.files
                if key.startswith("meta_") and data[key].dtype.kind == "U"
            }
    except (
        OSError,
        ValueError,
        AttributeError,
        TypeError,
        zipfile.BadZipFile,
        EOFError,
    ):  # not an .npz: load_statistics says why
        return {}


def load_statistics(path: str | Path) -> tuple[Array, Array]:
    """`mu` and `sigma` from an .npz written by save_statistics or pytorch-fid."""
    path = Path(path)
    if not path.is_file():
        raise DiffkitError(f"statistics file {path} does not exist: give the path of an .npz with mu and sigma")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DiffkitError(f"{path} is not a readable .npz file ({err}): give an .npz with mu and sigma") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DiffkitError(
            f"{path} holds a single array, not an .npz with mu and sigma: give an .npz written by "
            "diffkit or pytorch-fid"
        )
    with data:
        missing = [key for key in ("mu", "sigma") if key not in data.files]
        if missing:
            raise DiffkitError(
                f"{path} has no {' or '.join(missing)} array (it has "
                f"{', '.join(data.files) or 'nothing'}): give an .npz written by diffkit or pytorch-fid"
            )
        try:
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
        except (OSError, ValueError, TypeError, zipfile.BadZipFile, EOFError) as err:
            raise DiffkitError(f"{path} has unreadable mu/sigma arrays ({err}): give an .npz of numbers") from None
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DiffkitError(f"{path} holds NaN or infinite statistics: measure them again (--save-stats)")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DiffkitError(
            f"{path} holds mu {mu.shape} and sigma {sigma.shape}, not (D,) and (D, D): "
            "give an .npz written by diffkit or pytorch-fid"
        )
    return mu, sigma
