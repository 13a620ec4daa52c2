"""Supervised warm-up (SFT, the reference policy π_ref), its options, checkpoints, and the valid-split
model selection that SFT and alignment share. The alignment loop lives in :mod:`blade.align.loop`."""
