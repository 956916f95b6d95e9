"""JSON presets of TS2-Net configurations (package data)."""
