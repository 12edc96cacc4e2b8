"""Stateless tensor operations: boxes, NMS, mask assembly, overlay."""
