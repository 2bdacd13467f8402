"""Natural-image architectures, classic group: importing a module registers its models."""
