"""The dataset kinds, one module each: its layout and options (docstring), OPTIONS, load(options) -> (train, test)."""
