"""Readers (one per format behind one interface) and atomic writers."""
