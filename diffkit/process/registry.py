"""The processes by name, and the one place settings become a process."""

from __future__ import annotations

from collections.abc import Callable

from diffkit.errors import DiffkitError
from diffkit.process.base import DiffusionProcess
from diffkit.process.consistency import ConsistencyProcess
from diffkit.process.edm import EDMProcess
from diffkit.process.flow import FlowProcess
from diffkit.process.vp import VPProcess
from diffkit.schedules import NoiseSchedule
from diffkit.settings import DiffusionSettings


def _vp(d: DiffusionSettings) -> DiffusionProcess:
    vp = d.vp_options()
    schedule = NoiseSchedule.create(
        vp.schedule,
        vp.timesteps,
        beta_start=vp.beta_start,
        beta_end=vp.beta_end,
        cosine_s=vp.cosine_s,
        sigmoid_start=vp.sigmoid_start,
        sigmoid_end=vp.sigmoid_end,
        sigmoid_tau=vp.sigmoid_tau,
        zero_terminal_snr=vp.zero_terminal_snr,
    )
    return VPProcess(schedule, vp.objective, d.min_snr_gamma)


def _edm(d: DiffusionSettings) -> DiffusionProcess:
    assert d.edm is not None  # filled in by DiffusionSettings when process = edm
    return EDMProcess(**d.edm.model_dump())


def _flow(d: DiffusionSettings) -> DiffusionProcess:
    assert d.flow is not None
    return FlowProcess(**d.flow.model_dump())


# name -> (builder from settings, one-line summary): `diffusion.process` chooses one
PROCESSES: dict[str, tuple[Callable[[DiffusionSettings], DiffusionProcess], str]] = {
    "vp": (_vp, VPProcess.summary),
    "edm": (_edm, EDMProcess.summary),
    "flow": (_flow, FlowProcess.summary),
}


def build_process(d: DiffusionSettings) -> DiffusionProcess:
    """The process a run's [diffusion] settings describe."""
    if d.process not in PROCESSES:  # settings validate the name; this guards direct construction
        raise DiffkitError(f"unknown diffusion.process {d.process!r}: choose one of {', '.join(PROCESSES)}")
    process = PROCESSES[d.process][0](d)
    return ConsistencyProcess(process) if d.consistency else process


def default_processes(names: list[str]) -> dict[str, DiffusionProcess]:
    """Each named process with its default options (vp: the default cosine schedule), by name."""
    unknown = [n for n in names if n not in PROCESSES]
    if unknown:
        raise DiffkitError(f"unknown process {unknown[0]!r}: choose from {', '.join(PROCESSES)}")
    return {name: PROCESSES[name][0](DiffusionSettings(process=name)) for name in names}
