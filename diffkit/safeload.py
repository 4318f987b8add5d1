"""The one way diffkit opens a torch (pickle-based) file: `torch.load(weights_only=True)`, so no code runs.

Resume states and the Inception FID weights (given by path or found in the torch hub cache) both come
through `load_torch_file`; everything else diffkit reads is safetensors, npz (`allow_pickle=False`),
TOML, JSON or an image. A file that would need code to unpickle is refused, never loaded unsafely.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from diffkit.errors import DiffkitError


def load_torch_file(path: Path, what: str, fix: str) -> Any:
    """`path` loaded onto the CPU with `weights_only=True`; any failure is one line: `{what} {path} ...; {fix}`."""
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols would break the one-line error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or "global" in str(exc):  # it would need to run code: refused, not retried unsafely
            raise DiffkitError(f"{what} {path} was refused: it holds objects that would run code; {fix}") from None
        raise DiffkitError(f"{what} {path} cannot be read (not a torch file); {fix}") from None
    except Exception as exc:  # any other decoding failure of an untrusted file
        reason = " ".join(str(exc).split())[:120]
        raise DiffkitError(f"{what} {path} cannot be read ({type(exc).__name__}: {reason}); {fix}") from None
