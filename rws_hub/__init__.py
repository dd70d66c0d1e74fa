"""rws-hub: Robust Weight Signatures."""
