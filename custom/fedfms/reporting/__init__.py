"""Reporting: parameter accounting, metric tables and plots."""
