"""The page of `diffkit app`, built with Gradio around `diffkit.app.handlers` (one tab per handler).

Only wiring lives here: controls, the progress bar, and mistakes turned into a message in the page
(the server keeps serving). Importing this module imports gradio, so only `diffkit app` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

# offline: no usage statistics, no version check, no hub look-ups (set before gradio is imported)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_SSR_MODE", "False")

import gradio as gr

from diffkit.app import handlers as h
from diffkit.app.widgets import CSS, MODEL, _error, _guard, _picture, _status, _ticker, _whole_number
from diffkit.errors import DiffkitError


def build(app: h.AppRun) -> gr.Blocks:
    """The whole page: six tabs over the served run."""
    d = h.defaults(app)
    samplers = h.sampler_names()
    timesteps = app.loaded.schedule.timesteps if app.loaded is not None else 1000
    k = app.loaded.num_classes if app.loaded is not None else 0
    with gr.Blocks(title="diffkit app", analytics_enabled=False) as page:
        gr.Markdown("### diffkit app\n" + (h.describe(app) if app.loaded is not None else "no run"))
        if app.loaded is None:
            gr.Markdown(_error(f"No run to serve: {app.error}"), elem_id="run-error")
        with gr.Tabs():
            with gr.Tab("Sample", id="sample"):
                _sample_tab(app, d, samplers, timesteps)
            with gr.Tab("Watch it denoise", id="watch"):
                _watch_tab(app, d, samplers, timesteps)
            with gr.Tab("Compare samplers", id="compare"):
                _compare_tab(app, d, samplers, k)
            with gr.Tab("Inpaint", id="inpaint"):
                load_first = _inpaint_tab(app, d, samplers, timesteps)
            with gr.Tab("Interpolate", id="interpolate"):
                _interpolate_tab(app, d, k)
            with gr.Tab("The run", id="run"):
                load_run = _run_tab(app)
        if app.loaded is not None:
            page.load(**load_first)
            page.load(**load_run)
    return page


def _sample_controls(
    app: h.AppRun, d: dict[str, Any], samplers: list[str], timesteps: int, *, every: bool
) -> list[Any]:
    choices = h.class_choices(app, every=every)
    with gr.Row():
        klass = gr.Dropdown(choices, value=choices[0] if every or len(choices) == 1 else choices[1], label="class")
        cfg = gr.Slider(0, 10, value=d["cfg"], step=0.25, label="guidance (0 unconditional, 1 conditional)")
        sampler = gr.Dropdown(samplers, value=d["sampler"], label="sampler")
        steps = _whole_number(min(d["steps"], timesteps), f"steps (1 to {timesteps})")
        seed = _whole_number(d["seed"], "seed (0 or more)")
    return [klass, cfg, sampler, steps, seed]


def _controls(klass: str, cfg: float, sampler: str, steps: int, seed: int) -> dict[str, Any]:
    """The values of `_sample_controls` as the handlers' keywords."""
    return {"class_choice": klass, "cfg": cfg, "sampler": sampler, "steps": steps, "seed": seed}


def _show_frame(out: h.Denoising | h.Interpolated | None, k: int) -> tuple[Any, ...]:
    """Frame `k` (counted from 1, as the slider and the caption count) of a recorded result and its caption
    (the frame sliders of Watch and Interpolate)."""
    if out is None:
        return gr.skip(), gr.skip()
    k = max(0, min(int(k) - 1, len(out.frames) - 1))
    return str(out.frames[k]), out.caption(k)


def _sample_tab(app: h.AppRun, d: dict[str, Any], samplers: list[str], timesteps: int) -> None:
    gr.Markdown("A grid from noise: a row per class, one class, or unconditional (`diffkit sample`).")
    controls = _sample_controls(app, d, samplers, timesteps, every=True)
    with gr.Row():
        num = gr.Slider(1, 16, value=d["num"], step=1, label="images (per class, for a row per class)")
        run = gr.Button("Sample", variant="primary", elem_id="sample-run")
    status = _status()
    grid = _picture("sample-grid")
    download = gr.DownloadButton("Download the PNGs (zip)", elem_id="sample-download", interactive=False)

    def on_sample(
        klass: str,
        cfg: float,
        sampler: str,
        steps: int,
        seed: int,
        num: int,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        def act() -> tuple[Any, ...]:
            controls = _controls(klass, cfg, sampler, steps, seed)
            out = h.sample(app, **controls, num=num, progress=_ticker(progress, "sampling"))
            return str(out.grid), gr.update(value=str(out.archive), interactive=True), out.info

        return _guard(2, act)

    run.click(on_sample, [*controls, num], [grid, download, status], concurrency_id=MODEL)


def _watch_tab(app: h.AppRun, d: dict[str, Any], samplers: list[str], timesteps: int) -> None:
    gr.Markdown(
        "One image's reverse diffusion: the state x_t and the clean image x̂0 predicted from it, at evenly "
        "spaced steps (`diffkit sample --process --gif`). Move the slider over the frames."
    )
    controls = _sample_controls(app, d, samplers, timesteps, every=False)
    with gr.Row():
        frames = gr.Slider(2, 50, value=11, step=1, label="frames")
        run = gr.Button("Denoise", variant="primary", elem_id="watch-run")
    status = _status()
    state = gr.State(None)
    with gr.Row():
        with gr.Column():
            slider = gr.Slider(1, 11, value=11, step=1, label="frame", elem_id="watch-slider")
            caption = gr.Markdown("")
            frame = _picture("watch-frame")
        with gr.Column():
            strip = _picture("watch-strip", "every frame: x_t (top), the x̂0 predicted from it (bottom)")
            gif = gr.DownloadButton("Download the GIF", interactive=False)

    on_watch = _watch_action(app)

    run.click(on_watch, [*controls, frames], [state, frame, slider, caption, strip, gif, status], concurrency_id=MODEL)
    slider.change(_show_frame, [state, slider], [frame, caption], show_progress="hidden")


def _watch_action(app: h.AppRun) -> Callable[..., tuple[Any, ...]]:
    """Record one image's denoising: the Watch tab's action."""

    def on_watch(
        klass: str,
        cfg: float,
        sampler: str,
        steps: int,
        seed: int,
        frames: int,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        def act() -> tuple[Any, ...]:
            controls = _controls(klass, cfg, sampler, steps, seed)
            out = h.watch(app, **controls, frames=frames, progress=_ticker(progress, "denoising"))
            last = len(out.frames) - 1
            return (
                out,
                str(out.frames[last]),
                gr.update(minimum=1, maximum=last + 1, value=last + 1),
                out.caption(last),
                str(out.strip),
                gr.update(value=str(out.gif), interactive=True),
                out.info,
            )

        return _guard(6, act)

    return on_watch


def _compare_tab(app: h.AppRun, d: dict[str, Any], samplers: list[str], k: int) -> None:
    gr.Markdown(
        "The same starting noise through several samplers and step counts, a row each, with the model "
        "evaluations (NFE) and the time of each (`diffkit compare-samplers`)."
    )
    choices = h.class_choices(app, every=True)
    with gr.Row():
        chosen = gr.CheckboxGroup(
            samplers, value=[s for s in ("ddim", "dpm++2m", "heun") if s in samplers], label="samplers"
        )
        steps = gr.Textbox("10,25", label="step counts (comma-separated)")
    with gr.Row():
        num = gr.Slider(1, 16, value=min(k or 8, 10), step=1, label="images per row")
        klass = gr.Dropdown(choices, value=choices[0], label="classes (every class: in turn)")
        cfg = gr.Slider(0, 10, value=d["cfg"], step=0.25, label="guidance")
        seed = _whole_number(d["seed"], "seed (0 or more)")
        run = gr.Button("Compare", variant="primary", elem_id="compare-run")
    status = _status()
    picture = _picture("compare-picture", "a row per sampler setting, the same noise in each column")
    table = gr.Markdown("")

    def on_compare(
        chosen: list[str],
        steps: str,
        num: int,
        klass: str,
        cfg: float,
        seed: int,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        def act() -> tuple[Any, ...]:
            out = h.compare(
                app,
                samplers=chosen,
                steps=steps,
                num=num,
                class_choice=klass,
                cfg=cfg,
                seed=seed,
                progress=_ticker(progress, "sampler steps"),
            )
            return str(out.picture), out.table, f"{len(chosen)} sampler(s) on the same noise"

        return _guard(2, act)

    run.click(on_compare, [chosen, steps, num, klass, cfg, seed], [picture, table, status], concurrency_id=MODEL)


def _inpaint_tab(app: h.AppRun, d: dict[str, Any], samplers: list[str], timesteps: int) -> dict[str, Any]:
    source = h.digit_source(app)[1] if app.loaded is not None else "none"
    gr.Markdown(
        "Pick a test image or upload one, paint the hole with the brush (or choose a shape), and fill it "
        f"(`diffkit inpaint`). Test images: {source}."
    )
    state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            index = _whole_number(0, "test image number")
            load = gr.Button("Load test image", elem_id="inpaint-load")
            upload = gr.File(label="or upload a PNG / JPEG", file_types=["image"], type="filepath")
            loaded = _status()  # what was loaded, or why not: next to the controls it concerns
            mask_choice = gr.Radio(h.MASK_CHOICES, value="center", label="mask (the hole is filled)")
            mask_file = gr.File(label="mask PNG (white = keep, black = hole)", file_types=[".png"], type="filepath")
        with gr.Column(scale=2):
            editor = gr.ImageEditor(
                label="paint the hole (red), then choose the mask 'drawn in the editor'",
                type="numpy",
                image_mode="RGBA",
                sources=[],
                transforms=[],
                layers=False,
                brush=gr.Brush(colors=["#ff0000"], default_size=24, color_mode="fixed"),
                canvas_size=(280, 280),
                fixed_canvas=True,
                elem_id="inpaint-editor",
            )
    with gr.Row():
        methods = gr.CheckboxGroup(["replace", "repaint", "sds"], value=["replace"], label="methods")
        sampler = gr.Dropdown(samplers, value=d["sampler"], label="sampler (replace)")
        steps = _whole_number(min(d["steps"], timesteps), f"steps, RePaint: levels (1 to {timesteps})")
        iterations = gr.Slider(10, 1000, value=200, step=10, label="SDS iterations")
        seed = _whole_number(d["seed"], "seed (0 or more)")
        run = gr.Button("Inpaint", variant="primary", elem_id="inpaint-run")
    status = _status()
    figure = _picture("inpaint-figure")
    table = gr.Markdown("")

    on_load, on_upload, on_inpaint = _inpaint_actions(app)

    # the mask choice is the user's alone: loading a picture (which the editor reports as an input too)
    # once flipped it to "drawn in the editor" and back, so nothing here changes it
    load.click(on_load, [index], [state, editor, loaded])
    upload.change(on_upload, [upload], [state, editor, loaded])
    run.click(
        on_inpaint,
        [state, editor, mask_choice, mask_file, methods, sampler, steps, iterations, seed],
        [figure, table, status],
        concurrency_id=MODEL,
    )
    return {"fn": on_load, "inputs": [index], "outputs": [state, editor, loaded]}


def _inpaint_actions(app: h.AppRun) -> tuple[Callable[..., tuple[Any, ...]], ...]:
    """Load a test image, take an upload, inpaint: the Inpaint tab's three actions."""

    def editor_value(inp: h.InpaintInput) -> dict[str, Any]:
        return {"background": str(inp.preview), "layers": [], "composite": str(inp.preview)}

    def on_load(index: int) -> tuple[Any, ...]:
        def act() -> tuple[Any, ...]:
            inp = h.load_digit(app, index)
            return inp, editor_value(inp), f"loaded {inp.what}"

        return _guard(2, act)

    def on_upload(path: str | None) -> tuple[Any, ...]:
        if not path:
            return gr.skip(), gr.skip(), gr.skip()

        def act() -> tuple[Any, ...]:
            inp = h.load_upload(app, path)
            return inp, editor_value(inp), f"loaded {inp.what}"

        return _guard(2, act)

    def on_inpaint(
        inp: h.InpaintInput | None,
        value: dict[str, Any] | None,
        mask_choice: str,
        mask_file: str | None,
        methods: list[str],
        sampler: str,
        steps: int,
        iterations: int,
        seed: int,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        def act() -> tuple[Any, ...]:
            out = h.inpaint_image(
                app,
                inp,
                mask_choice=mask_choice,
                layers=(value or {}).get("layers"),
                mask_file=mask_file,
                methods=methods,
                sampler=sampler,
                steps=steps,
                seed=seed,
                iterations=iterations,
                progress=_ticker(progress, "inpainting"),
            )
            return str(out.figure), out.table, "done: the scores are over the hole only"

        return _guard(2, act)

    return on_load, on_upload, on_inpaint


def _interpolate_tab(app: h.AppRun, d: dict[str, Any], k: int) -> None:
    gr.Markdown(
        "Between two classes (the same noise, the class embedding moving) or two seeds (slerp of their "
        "noise), decoded with deterministic DDIM (`diffkit interpolate`)."
    )
    numbers = [str(c) for c in range(k)]
    with gr.Row():
        mode = gr.Radio(["classes", "seeds"], value="classes" if k else "seeds", label="between")
        class_a = gr.Dropdown(numbers, value=numbers[0] if numbers else None, label="first class")
        class_b = gr.Dropdown(numbers, value=numbers[min(1, k - 1)] if numbers else None, label="second class")
        by_seeds = not k  # the controls of the other mode are hidden, not merely ignored
        seed_a = _whole_number(0, "first seed", visible=by_seeds)
        seed_b = _whole_number(1, "second seed", visible=by_seeds)
        seed_class = gr.Dropdown(
            h.class_choices(app, every=False), value=h.UNCONDITIONAL, label="class (seeds)", visible=by_seeds
        )
    with gr.Row():
        frames = gr.Slider(2, 32, value=10, step=1, label="frames")
        steps = _whole_number(min(d["steps"], 50), "DDIM steps (1 or more)")
        cfg = gr.Slider(0, 10, value=d["cfg"], step=0.25, label="guidance")
        seed = _whole_number(d["seed"], "noise seed (0 or more)", visible=not by_seeds)
        run = gr.Button("Interpolate", variant="primary", elem_id="interp-run")
    status = _status()
    state = gr.State(None)
    strip = _picture("interp-strip")
    with gr.Row():
        with gr.Column():
            frame = _picture("interp-frame")
        with gr.Column():
            slider = gr.Slider(1, 10, value=1, step=1, label="frame", elem_id="interp-slider")
            caption = gr.Markdown("")
            gif = gr.DownloadButton("Download the GIF", interactive=False)

    def on_mode(mode: str) -> tuple[Any, ...]:
        classes = mode == "classes"
        return tuple(gr.update(visible=v) for v in (classes, classes, not classes, not classes, not classes, classes))

    mode.change(on_mode, [mode], [class_a, class_b, seed_a, seed_b, seed_class, seed], show_progress="hidden")

    on_interpolate = _interpolate_action(app)

    inputs = [mode, class_a, class_b, seed_a, seed_b, seed_class, frames, steps, cfg, seed]
    run.click(on_interpolate, inputs, [state, strip, frame, slider, caption, gif, status], concurrency_id=MODEL)
    slider.change(_show_frame, [state, slider], [frame, caption], show_progress="hidden")


def _interpolate_action(app: h.AppRun) -> Callable[..., tuple[Any, ...]]:
    """Interpolate between two classes or two seeds: the Interpolate tab's action."""

    def on_interpolate(
        mode: str,
        class_a: str,
        class_b: str,
        seed_a: int,
        seed_b: int,
        seed_class: str,
        frames: int,
        steps: int,
        cfg: float,
        seed: int,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        def act() -> tuple[Any, ...]:
            out = h.interpolate(
                app,
                mode=mode,
                class_a=class_a,
                class_b=class_b,
                seed_a=seed_a,
                seed_b=seed_b,
                seed_class=seed_class,
                frames=frames,
                steps=steps,
                cfg=cfg,
                seed=seed,
                progress=_ticker(progress, "DDIM steps"),
            )
            return (
                out,
                str(out.strip),
                str(out.frames[0]),
                gr.update(minimum=1, maximum=len(out.frames), value=1),
                out.caption(0),
                gr.update(value=str(out.gif), interactive=True),
                out.info,
            )

        return _guard(6, act)

    return on_interpolate


def _run_tab(app: h.AppRun) -> dict[str, Any]:
    summary = gr.Markdown("", elem_id="run-summary")
    refresh = gr.Button("Refresh", size="sm")
    status = _status()
    curves = _picture("run-curves", "training curves", pixels=False)  # a row of its own: the full width, ticks readable
    gr.Markdown("FID against guidance", elem_classes=["dk-caption"])
    sweep = _picture("run-sweep", visible=False, pixels=False)  # shown once a sweep exists
    sweep_text = gr.Markdown("")
    with gr.Row():
        sweep_num = _whole_number(500, "images per guidance scale")
        sweep_run = gr.Button("Run the sweep (guidance 0, 1, 2, 3, 5)", elem_id="run-sweep-button")
    gr.Markdown("latest grids (newest first)", elem_classes=["dk-caption"])
    grids = gr.Gallery(
        show_label=False, buttons=[], columns=3, height="auto", object_fit="contain", elem_id="run-grids"
    )
    config = gr.Code(label="config.toml", language=None, interactive=False)

    def on_run() -> tuple[Any, ...]:
        def act() -> tuple[Any, ...]:
            out = h.overview(app)
            grids = [(str(p), caption) for p, caption in out.grids]
            sweep = gr.update(value=str(out.sweep), visible=True) if out.sweep is not None else gr.update(visible=False)
            curves = str(out.curves) if out.curves is not None else None
            return out.summary, curves, sweep, out.sweep_text, grids, out.config, ""

        return _guard(6, act)

    def on_sweep(num: int, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        def act() -> tuple[Any, ...]:
            plot, text = h.sweep(app, num, progress=_ticker(progress, "FID sweep"))
            return gr.update(value=str(plot), visible=True), text, "done: FID of each guidance scale"

        return _guard(2, act)

    outputs = [summary, curves, sweep, sweep_text, grids, config, status]
    refresh.click(on_run, None, outputs)
    sweep_run.click(on_sweep, [sweep_num], [sweep, sweep_text, status], concurrency_id=MODEL)
    return {"fn": on_run, "inputs": None, "outputs": outputs}


MAX_UPLOAD = "32mb"


def serve(app: h.AppRun, *, host: str, port: int) -> None:
    """Serve the page until interrupted; only the run's directory and the app's outputs can be fetched."""
    page = build(app)
    page.queue(default_concurrency_limit=1)
    try:
        page.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            show_error=False,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            enable_monitoring=False,
            footer_links=[],
            allowed_paths=app.served_paths,
            max_file_size=MAX_UPLOAD,  # an upload is an image of at most 16 megapixels: nothing needs more
            css=CSS,
            quiet=True,  # no "set share=True" hint: a local page has nothing to share; diffkit prints the URL
        )
    except OSError as exc:
        raise DiffkitError(f"cannot serve on {host}:{port} ({exc}): pick another --port") from None
