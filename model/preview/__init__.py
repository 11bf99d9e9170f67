"""The preview backend: CPU-only, no weights; animates the reference image from the speech."""
