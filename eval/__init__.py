"""Benchmark evaluation for Megrez-3B-Omni checkpoints: `python -m eval run ...` and `python -m eval convert ...`.

Reads a local JSONL of samples, generates greedily with HF `model.chat` or vLLM, writes predictions as it goes (a
stopped run resumes), then scores them with the benchmark's own conventions. See README.md, section "Evaluate".
"""
