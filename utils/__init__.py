"""Helpers of the MG-CLIP toolbox: config, data, CLIP backbone, LoRA, gap, metrics, trainer."""
