"""Tooling for tests, benchmarks and scripts: stand-in ONNX models, the fake camera clip, the
GPU kernel emulator. Never imported by the live product."""
