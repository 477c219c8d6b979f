"""Geometry that face analysis and swapping share: crop specs, alignment templates, affine helpers."""
