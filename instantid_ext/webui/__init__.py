"""The WebUI side of InstantID: the only code that touches AUTOMATIC1111 and ControlNet."""
