"""Analyses behind the paper's argument: entropy distribution, threshold sweeps, logit lens."""
