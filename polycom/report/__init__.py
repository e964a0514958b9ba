"""Reporting: collect sweep runs, statistics over seeds, tables and plots."""
