"""Helios samplers: schedules, UniPC, DMD, guidance and the pyramid transitions."""
