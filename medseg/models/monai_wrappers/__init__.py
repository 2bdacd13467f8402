"""Registry entries for MONAI's implementations where they are the papers' reference code."""
