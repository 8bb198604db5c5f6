"""Tools around trained adapters: export to peft or timm, multi-task serving, head analysis, speed.

Each builds on the method core and, where it needs runs or methods, on `heartlora.training`.
"""
