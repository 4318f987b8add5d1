"""`diffkit fid` as a library call: a request, its sources opened, a row per guidance scale, the floor."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from diffkit.errors import DiffkitError
from diffkit.evaluation.measuring import (
    Measured,
    choose_feature_net,
    class_judge,
    dataset_cache_key,
    distance,
    measure,
    measure_run,
    probe,
    read_statistics,
    save_measured,
)
from diffkit.evaluation.report import FidReport, Floor, Row
from diffkit.evaluation.sources import Images, Source, floor_partner, load_source_images, parse_eval_source
from diffkit.metrics import (
    MIN_SAMPLES,
    ClassifierFeatureNet,
    FeatureNet,
)
from diffkit.progress import Progress
from diffkit.runs import LoadedRun, load_run
from diffkit.sampling import SamplingPlan
from diffkit.settings import resolve_data_dir

DEFAULT_RUN_SAMPLES = 1000  # generated images per run source when --num is not given
# generated images per run source at most: they are measured batch by batch, but their features are kept
# (for the covariance and KID), 16 kB an image with Inception; FID's usual protocol takes 50,000
MAX_RUN_SAMPLES = 100_000
# --------------------------------------------------------------------------------------- the command


@dataclass
class FidRequest:
    """Everything `diffkit fid` takes; see `evaluate`."""

    sources: Sequence[str]
    features: str = "auto"
    inception_weights: Path | None = None
    num: int | None = None  # images per image source (a fixed random subset of datasets and folders)
    kid: bool = False
    class_accuracy: bool = False
    save_stats: Path | None = None
    sampler: str | None = None
    steps: int | None = None
    cfg: Sequence[float | None] | None = None  # guidance scales: several make a sweep; None: the run's default
    cfg_interval: tuple[float, float] | None = None  # guide only at noise levels σ in (low, high]; None: the run's
    autoguidance: float | None = None  # the guide network's weight; None: the run's
    seed: int | None = None
    checkpoint: str = "best"
    device: str = "auto"
    batch_size: int | None = None
    data_dir: Path | None = None
    cache_dir: Path | None = None
    floor: bool = True


def check_request(request: FidRequest, sources: Sequence[Source]) -> None:
    """Combinations that cannot mean anything, refused before any work."""
    if not 1 <= len(sources) <= 2:
        raise DiffkitError(f"give one source (its statistics) or two (the distance between them), not {len(sources)}")
    runs = [s for s in sources if s.kind == "run"]
    if request.num is not None and request.num < MIN_SAMPLES:
        raise DiffkitError(
            f"--num {request.num} is too few: a covariance needs at least {MIN_SAMPLES} images "
            "(FID is only meaningful with hundreds)"
        )
    if runs and request.num is not None and request.num > MAX_RUN_SAMPLES:
        raise DiffkitError(
            f"--num {request.num:,} is too large for a run source: at most {MAX_RUN_SAMPLES:,} generated images "
            "(the features of each are held for FID and KID; the usual FID protocol takes 50,000)"
        )
    if request.kid and len(sources) != 2:
        raise DiffkitError("--kid compares two sources: give a second source or drop --kid")
    if request.save_stats is not None and len(sources) != 1:
        raise DiffkitError("--save-stats saves the statistics of one source: give one source")
    if request.class_accuracy and not runs:
        raise DiffkitError("--class-accuracy judges generated images: give a class-conditional run as run:DIR")
    scales = list(request.cfg or [])
    if scales and not runs:
        raise DiffkitError("--cfg sets the guidance of generated images: give a run as run:DIR, or drop --cfg")
    if len(scales) > 1 and len(runs) != 1:
        raise DiffkitError("a guidance sweep (several --cfg values) needs exactly one run source")
    if len(scales) > 1 and request.save_stats is not None:
        raise DiffkitError("--save-stats saves one set of statistics: give a single --cfg value")
    sampling = (request.steps, request.seed, request.cfg_interval, request.autoguidance)
    if not runs and (request.sampler or any(v is not None for v in sampling)):
        raise DiffkitError(
            "--sampler, --steps, --seed, --cfg-interval and --autoguidance set how a run is sampled: "
            "give a run as run:DIR"
        )


def evaluate(request: FidRequest, progress: Progress | None = None) -> FidReport:
    """Statistics of one source, or FID (and KID, class accuracy, the real floor) between two."""
    opened = _open(request)
    net, judge = _nets(request, opened, progress)
    fixed, notes = _measure_fixed(request, opened, net, progress)
    feature_name = net.name if net is not None else next(iter(fixed.values())).feature_net
    rows, sampling, measured = _rows(request, opened, fixed, net, judge, progress)
    first_run = next(iter(opened.runs.values()), None)
    report = FidReport(
        feature_name,
        [m.label for m in measured],
        [m.num for m in measured],
        rows,
        sampling=sampling,
        notes=opened.notes + notes,
        run=first_run.root if first_run else None,
        num_classes=first_run.num_classes if first_run else 0,
    )
    if len(opened.sources) == 1:
        report.statistics = measured[0]
        if request.save_stats is not None:
            report.saved_statistics = save_measured(request.save_stats, measured[0])
    elif request.floor and net is not None:
        report.floor = _floor(opened.sources, measured, net, request, opened.data_dir, progress)
    report.notes += _small_sample_notes(measured)
    return report


@dataclass
class _Opened:
    """The sources of a request, with runs loaded and dataset / folder images read (cheap; no sampling)."""

    sources: list[Source]
    runs: dict[int, LoadedRun]  # source index -> the loaded run
    images: dict[int, Images]  # source index -> images of a dataset or folder
    data_dir: Path
    notes: list[str]

    def shapes(self) -> dict[int, tuple[int, ...]]:
        """(C, H, W) of every source with images, runs included (from their settings)."""
        out = {i: tuple(im.images.shape[1:]) for i, im in self.images.items()}
        for i, run in self.runs.items():
            d = run.settings.data
            out[i] = (d.channels, d.image_size, d.image_size)
        return out


def _open(request: FidRequest) -> _Opened:
    sources = [parse_eval_source(t) for t in request.sources]
    check_request(request, sources)
    runs = {
        i: load_run(s.path, request.checkpoint, device=request.device)  # type: ignore[arg-type]
        for i, s in enumerate(sources)
        if s.kind == "run"
    }
    data_dir = _data_dir(request, runs.values())
    images = {
        i: load_source_images(s, request.num, data_dir=data_dir)
        for i, s in enumerate(sources)
        if s.kind in ("dataset", "folder")
    }
    notes = [note for im in images.values() for note in im.notes]
    if None in (request.cfg or []):
        notes += [f"guidance auto: {_default_cfg(run)}" for run in runs.values()]
    return _Opened(sources, runs, images, data_dir, notes)


def _default_cfg(run: LoadedRun) -> str:
    """What `--cfg auto` means for this run, in words."""
    chosen = run.settings.sample.cfg
    if run.chosen_cfg is None:
        return f"{chosen:g}, the run's sample.cfg (it made no guidance sweep after training)"
    return f"{chosen:g}, picked by the run's guidance sweep after training (plan.json)"


def _nets(
    request: FidRequest, opened: _Opened, progress: Progress | None
) -> tuple[FeatureNet | None, ClassifierFeatureNet | None]:
    """The feature net (none when every source is an .npz) and the class judge, both checked against
    every source's image shape now, so a mismatch fails before any sampling."""
    shapes = opened.shapes()
    net = None
    if shapes:
        net = choose_feature_net(
            request.features,
            list(shapes.values()),
            inception_weights=request.inception_weights,
            data_dir=opened.data_dir,
            cache_dir=request.cache_dir,
            progress=progress,
        )
        for i, shape in shapes.items():
            probe(net, shape, str(opened.sources[i]))
    judge = None
    if request.class_accuracy:
        i, run = next(iter(opened.runs.items()))
        judge = class_judge(
            run.settings, str(run.root), data_dir=opened.data_dir, cache_dir=request.cache_dir, progress=progress
        )
        probe(judge, shapes[i], str(run.root))
    return net, judge


def _measure_fixed(
    request: FidRequest, opened: _Opened, net: FeatureNet | None, progress: Progress | None
) -> tuple[dict[int, Measured], list[str]]:
    """Statistics of the sources that do not depend on guidance: .npz files, datasets (cached), folders."""
    fixed: dict[int, Measured] = {}
    notes: list[str] = []
    for i, s in enumerate(opened.sources):
        if s.kind == "stats":
            fixed[i], stat_notes = read_statistics(s, net)
            notes += stat_notes
        elif i in opened.images:
            assert net is not None
            key = dataset_cache_key(s, request.num, net, opened.data_dir) if s.kind == "dataset" else None
            fixed[i] = measure(opened.images[i], net, cache_key=key, cache_dir=request.cache_dir, progress=progress)
    return fixed, notes


def _data_dir(request: FidRequest, runs: Iterable[LoadedRun]) -> Path:
    """The request's data_dir, else `resolve_data_dir` (DIFFKIT_DATA_DIR, else the first run's data_dir)."""
    if request.data_dir is not None:
        return request.data_dir
    return resolve_data_dir(next((run.settings.data_dir for run in runs), None))


def _rows(
    request: FidRequest,
    opened: _Opened,
    fixed: dict[int, Measured],
    net: FeatureNet | None,
    judge: ClassifierFeatureNet | None,
    progress: Progress | None,
) -> tuple[list[Row], SamplingPlan | None, list[Measured]]:
    """One row per guidance scale: generate from each run source, measure, compare, judge classes."""
    count = len(opened.sources)
    if not opened.runs:
        measured = [fixed[i] for i in range(count)]
        dist = distance(*measured, kid=request.kid) if count == 2 else None
        return [Row(None, measured[-1].num, dist)], None, measured
    num = request.num or DEFAULT_RUN_SAMPLES
    scales: list[float | None] = list(request.cfg) if request.cfg else [None]
    # every scale checked before the first image is generated (e.g. --cfg 2 on an unconditional run)
    plans = {
        (i, scale): run.plan(
            sampler=request.sampler,
            steps=request.steps,
            cfg=scale,
            cfg_interval=request.cfg_interval,
            autoguidance=request.autoguidance,
            seed=request.seed,
            batch_size=request.batch_size,
        )
        for i, run in opened.runs.items()
        for scale in scales
    }
    rows, measured = [], []
    for scale in scales:
        measured = []
        row = Row(None, num)
        for i in range(count):
            if i not in opened.runs:
                measured.append(fixed[i])
                continue
            plan, run = plans[(i, scale)], opened.runs[i]
            assert net is not None
            generated, row.accuracy, row.preview = measure_run(run, num, plan, net, judge=judge, progress=progress)
            measured.append(generated)
            row.cfg = plan.cfg
        if count == 2:
            row.distance = distance(*measured, kid=request.kid)
        rows.append(row)
    return rows, next(iter(plans.values())), measured


def _floor(
    sources: Sequence[Source],
    measured: Sequence[Measured],
    net: FeatureNet,
    request: FidRequest,
    data_dir: Path,
    progress: Progress | None,
) -> Floor | None:
    """Real against real with the same feature net and image count, when one side is a dataset split and
    the other generated images or a folder: the score a model that matched the data would get."""
    kinds = [s.kind for s in sources]
    if sorted(kinds) not in (["dataset", "run"], ["dataset", "folder"]):
        return None
    ref = kinds.index("dataset")
    other = 1 - ref
    partner = floor_partner(sources[ref], data_dir)
    if partner is None:
        return None
    num = measured[other].num
    partner_source = Source("dataset", partner)
    images = load_source_images(partner_source, num, data_dir=data_dir)
    key = dataset_cache_key(partner_source, num, net, data_dir)
    real = measure(images, net, cache_key=key, cache_dir=request.cache_dir, progress=progress)
    return Floor((real.label, measured[ref].label), real.num, distance(real, measured[ref], kid=request.kid))


def _small_sample_notes(measured: Sequence[Measured]) -> list[str]:
    dims = int(measured[0].mu.shape[0])
    small = [m for m in measured if 0 < m.num < dims]
    return [
        f"{m.label}: {m.num} images for {dims}-dimensional features; FID is biased upwards and noisy with "
        "fewer images than dimensions (use hundreds or more)"
        for m in small
    ]
