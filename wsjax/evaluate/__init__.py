"""Evaluation: logit metrics, fine-tuning, the evaluate stage (reconstruction: `wsjax.ae.reconstruction`)."""
