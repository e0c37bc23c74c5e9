"""Entry point the WebUI executes: the InstantID script and its callbacks."""

from instantid_ext.webui.callbacks import register_callbacks
from instantid_ext.webui.script import InstantIDScript

__all__ = ["InstantIDScript"]

register_callbacks()
