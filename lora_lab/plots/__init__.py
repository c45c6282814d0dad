"""Plot functions, one module per chapter. Each returns a matplotlib Figure and never shows it."""
