"""Dataset readers, synthesis, validation and label remapping."""
