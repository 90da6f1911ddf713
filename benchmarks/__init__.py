"""Benchmarks of modify against plain torch, PEFT and torch.func: ``python -m benchmarks`` prints the tables."""
