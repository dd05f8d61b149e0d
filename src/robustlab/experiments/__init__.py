"""Recipes and the pipelines that run them (the demo is the first)."""

from .demo import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
