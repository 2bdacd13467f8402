"""Natural-image architectures, attention group: importing a module registers its models."""
