"""Gridloop feedback: the callback at the end of the loop (爱心回访) and the figures that judge it."""
