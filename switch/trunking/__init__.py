"""Carrier trunks, routes, their monitor, the dialer and campaigns."""
