"""Evaluation: logit metrics, reconstruction evaluation, the evaluate stage."""
