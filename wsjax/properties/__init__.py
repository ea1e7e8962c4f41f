"""Representations of a zoo's weights and the probes that read properties off them."""
