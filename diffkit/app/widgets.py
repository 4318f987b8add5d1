"""The page's pieces every tab uses: pictures, number boxes, the status line, mistakes as a message in the
page (never a stack trace), the progress bar. Imported by `diffkit.app.ui` only, after it has set
gradio's offline environment, so only `diffkit app` imports gradio."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import gradio as gr

from diffkit.app import handlers as h
from diffkit.errors import DiffkitError

log = logging.getLogger("diffkit.app")

MODEL = "model"  # one concurrency group: actions that run the network wait for each other
# small digits drawn as blocks (nearest neighbour) filling their box, not as a thumbnail in its corner
CSS = """
.dk-status { min-height: 1.5em; }
.dk-error { color: #b91c1c; font-weight: 600; }
.dk-fill .image-frame { width: 100% !important; height: auto !important; }
.dk-fill img { width: 100% !important; height: auto !important; max-height: 78vh; object-fit: contain; }
.dk-pixels img { image-rendering: pixelated; }
.dk-caption p { margin: 0; font-size: 0.9em; color: #555; }
"""
# an upload's place on the server (/tmp/diffkit-app-.../gradio/<hash>/name.png) is no business of the page
_SERVER_PATH = re.compile(r"/\S*diffkit-app-[^\s/]*/(?:\S*/)?([^\s/]+)")


def _error(message: str) -> str:
    text = _SERVER_PATH.sub(r"\1", " ".join(message.split()))
    return f'<span class="dk-error">⚠ {text}</span>'


def _picture(
    elem_id: str | None = None, caption: str | None = None, *, visible: bool = True, pixels: bool = True
) -> gr.Image:
    """A picture without Gradio's label badge and corner buttons over it (a caption line above instead),
    enlarged to fill its box (see CSS): `pixels` as sharp blocks (digits), else smoothly (plots)."""
    if caption:
        gr.Markdown(caption, elem_classes=["dk-caption"], visible=visible)
    return gr.Image(
        type="filepath",
        format="png",
        show_label=False,
        buttons=[],
        interactive=False,
        elem_id=elem_id,
        elem_classes=["dk-fill", "dk-pixels"] if pixels else ["dk-fill"],
        visible=visible,
    )


def _whole_number(value: float, label: str, **kw: Any) -> gr.Number:
    """A number box with no bounds of its own: the handler checks the value and says what is allowed,
    where a bounded box would clamp it silently (steps 0 -> 1) or fail with Gradio's own pop-up."""
    return gr.Number(value, precision=0, label=label, **kw)


def _guard(n: int, action: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    """`action()`'s outputs, or (n × unchanged, the message) when it fails: never a stack trace in the page."""
    try:
        return action()
    except DiffkitError as exc:
        return (*[gr.skip()] * n, _error(str(exc)))
    except Exception as exc:  # the server keeps serving; the traceback goes to its log only
        log.exception("diffkit app: unexpected error")
        return (*[gr.skip()] * n, _error(f"unexpected error ({type(exc).__name__}): {exc}"))


def _ticker(progress: gr.Progress, desc: str) -> h.Progress:
    def tick(done: int, total: int, message: str = "", /) -> None:
        progress((done, total), desc=message or desc)

    return tick


def _status() -> gr.Markdown:
    return gr.Markdown("", elem_classes=["dk-status"])
