"""Sub-commands of the `heartlora` CLI, one module each (see `heartlora.cli`)."""
