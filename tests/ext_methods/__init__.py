"""Methods defined outside the blade package, registered by config alone (``module:``) in tests."""
