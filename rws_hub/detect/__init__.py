"""The corruption detector behind "auto"."""
