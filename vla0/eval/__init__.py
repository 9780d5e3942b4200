"""Closed-loop evaluation of policies in Meta-World, with reports."""
