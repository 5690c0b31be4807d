"""Intake's pure rules: what a report must hold, where it lies, what a timeline shows."""
