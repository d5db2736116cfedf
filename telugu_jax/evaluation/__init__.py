"""Codec and S2S evaluation: metrics, plots."""
