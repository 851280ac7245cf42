"""Model backends behind one small protocol (``base.Backend``). The only package that imports torch."""
