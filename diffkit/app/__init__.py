"""`diffkit app`: a local web page over a trained run (optional extra: pip install 'diffkit[app]').

`handlers` holds one plain function per tab: it calls the same library functions as the CLI commands
and returns files and text, with no UI library involved (tested without a browser). `ui` builds the
Gradio page around them; only it imports gradio, and only when `diffkit app` runs.
"""
