"""Visualisation: importance overlays (PNG, MP4) and K/latency timelines."""
