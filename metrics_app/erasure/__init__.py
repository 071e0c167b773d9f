"""Erasure: a conversation taken out of everything that holds it, with a record of who did it and when."""
