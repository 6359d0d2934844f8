"""Megrez-3B-Omni on vLLM: the model class (`vllm_demo.model`), its multimodal processing
(`vllm_demo.processing`) and the registration vLLM finds as a plugin (`vllm_demo.plugin`)."""
