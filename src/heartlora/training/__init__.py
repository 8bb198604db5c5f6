"""Training: run settings, the fine-tuning methods, the trainer and the multi-run suite.

Builds on the method core (`heartlora`), the datasets (`heartlora.data`) and the bundled default
(`heartlora.bundled`); nothing below it imports from here.
"""
