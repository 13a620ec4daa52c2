"""Compared methods, one module each (DPO, S-DPO, GRPO, BOND, vBoN, BoNBoN, BoN)."""
