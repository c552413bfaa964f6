"""Tests for sixchat; run with C{python -m twisted.trial sixchat}."""
