"""Natural-image architectures, refine group: importing a module registers its models."""
