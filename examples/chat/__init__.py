"""The chat demo: each browser's conversation lives in its servletsession session."""
