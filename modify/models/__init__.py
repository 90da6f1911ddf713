"""Models built from primitives only: GPT, Llama, ResNet."""

__all__: list[str] = []
