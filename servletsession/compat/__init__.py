"""Drop-in replacements for other session packages, built on servletsession."""
