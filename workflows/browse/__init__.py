"""``itemlens browse``: a local, read-only web app over the client (Starlette, Jinja2 templates
rendered on the server, uvicorn). See docs/browse.md, and app.py for the pages."""

from itemlens.workflows.browse.app import Browser, create_app, serve

__all__ = ["Browser", "create_app", "serve"]
