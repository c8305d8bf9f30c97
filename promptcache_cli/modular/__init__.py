"""Modular mode: compile each module into cached states, stitch them into one sequence, refresh."""
