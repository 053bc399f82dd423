"""Sections of ``qviz report``: each module has ``section(model, calib, ctx) -> [(title, figure or html)]``."""
